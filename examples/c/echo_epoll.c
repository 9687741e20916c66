/* echo_epoll: wsrt inside the host's own event loop. The loop waits on wsrt_event_fd (readable
 * while events are pending), on its own timerfd (a 1 s tick that logs the server's counters
 * to stderr when they changed) and on a signalfd; when the event fd is readable it polls with
 * timeout 0 until no event is left. No thread of its own, no busy polling.
 * Usage: echo_epoll [listen-address]; prints "listening on PORT"; stops on SIGTERM/SIGINT. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <wsrt.h>

int main(int argc, char **argv) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);

  wsrt_config *cfg = wsrt_config_new();
  wsrt_server *srv = NULL;
  if (wsrt_config_set(cfg, "listen", argc > 1 ? argv[1] : "127.0.0.1:0") != WSRT_OK ||
      wsrt_server_start(cfg, NULL, NULL, 0, &srv) != WSRT_OK) {
    fprintf(stderr, "start: %s\n", wsrt_last_error());
    return 1;
  }
  wsrt_config_free(cfg);
  int efd = -1;
  uint16_t port = 0;
  wsrt_event_fd(srv, &efd);
  wsrt_server_port(srv, &port);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event a = {.events = EPOLLIN, .data.fd = efd};
  struct epoll_event b = {.events = EPOLLIN, .data.fd = sfd};
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  struct itimerspec tick = {.it_interval = {1, 0}, .it_value = {1, 0}};
  timerfd_settime(tfd, 0, &tick, NULL);
  struct epoll_event c = {.events = EPOLLIN, .data.fd = tfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, efd, &a);
  epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &b);
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &c);
  printf("listening on %u\n", (unsigned)port);
  fflush(stdout);

  wsrt_batch *batch = wsrt_batch_new();
  int running = 1;
  uint64_t last_in = 0;
  while (running) {
    struct epoll_event ready[3];
    int n = epoll_wait(ep, ready, 3, -1);
    for (int i = 0; i < n; i++) {
      if (ready[i].data.fd == sfd) {
        running = 0;
        continue;
      }
      if (ready[i].data.fd == tfd) {
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) < 0) continue;
        wsrt_stats st;
        if (wsrt_server_stats(srv, &st) == WSRT_OK && st.messages_in != last_in) {
          last_in = st.messages_in;
          fprintf(stderr, "tick: %llu open, %llu messages in\n", (unsigned long long)st.open,
                  (unsigned long long)st.messages_in);
        }
        continue;
      }
      int got;
      while ((got = wsrt_poll(srv, batch, 256, 0)) > 0) {
        for (int j = 0; j < got; j++) {
          const wsrt_event *ev = wsrt_batch_get(batch, (size_t)j);
          if (ev->kind == WSRT_EVENT_MESSAGE) wsrt_send(srv, ev->conn, ev->data, ev->len, ev->is_text);
        }
      }
    }
  }
  wsrt_server_shutdown(srv, 5000);
  wsrt_batch_free(batch);
  wsrt_server_free(srv);
  close(ep);
  close(tfd);
  close(sfd);
  return 0;
}
