/* echo_adopt: the host accepts connections on its own listener, reads the HTTP request head
 * itself (as Node's 'upgrade' event, Go's Hijack or a JVM server would), and hands socket and
 * head to wsrt with wsrt_adopt. A second thread drains events and echoes.
 * Usage: echo_adopt [IPv4:port] (the host's own listener, default 127.0.0.1:0); prints
 * "listening on PORT" (the host's own port); stops on SIGTERM/SIGINT (signalfd). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wsrt.h>

static wsrt_server *srv;
static atomic_int stopping;

/* Drains events and echoes; stops once the main thread has shut the server down. */
static void *poller(void *arg) {
  (void)arg;
  wsrt_batch *batch = wsrt_batch_new();
  while (!atomic_load(&stopping)) {
    int n = wsrt_poll(srv, batch, 256, 100);
    for (int i = 0; i < n; i++) {
      const wsrt_event *ev = wsrt_batch_get(batch, (size_t)i);
      if (ev->kind == WSRT_EVENT_MESSAGE) wsrt_send(srv, ev->conn, ev->data, ev->len, ev->is_text);
    }
  }
  wsrt_batch_free(batch);
  return NULL;
}

int main(int argc, char **argv) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);

  wsrt_config *cfg = wsrt_config_new();
  /* wsrt's own listener is not used by this host: a loopback port nobody connects to. */
  wsrt_config_set(cfg, "listen", "127.0.0.1:0");
  if (wsrt_server_start(cfg, NULL, NULL, 0, &srv) != WSRT_OK) {
    fprintf(stderr, "start: %s\n", wsrt_last_error());
    return 1;
  }
  wsrt_config_free(cfg);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (argc > 1) {
    char host[64];
    snprintf(host, sizeof host, "%s", argv[1]);
    char *colon = strrchr(host, ':');
    if (colon == NULL) {
      fprintf(stderr, "usage: echo_adopt [IPv4:port]\n");
      return 2;
    }
    *colon = '\0';
    addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
      fprintf(stderr, "not an IPv4 address: %s\n", host);
      return 2;
    }
  }
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = sizeof addr;
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &len) != 0) {
    perror("listen");
    return 1;
  }
  printf("listening on %u\n", (unsigned)ntohs(addr.sin_port));
  fflush(stdout);

  pthread_t t;
  pthread_create(&t, NULL, poller, NULL);

  struct pollfd fds[2] = {{.fd = lfd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
  while (poll(fds, 2, -1) > 0 && !(fds[1].revents & POLLIN)) {
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    /* Read the request head as a host's HTTP server would (and possibly a few bytes more). */
    char head[8192];
    size_t used = 0;
    while (used < sizeof head) {
      ssize_t r = read(c, head + used, sizeof head - used);
      if (r <= 0) break;
      used += (size_t)r;
      if (used >= 4 && memmem(head, used, "\r\n\r\n", 4)) break;
    }
    /* Here a host would authenticate (cookies, tokens) before handing over. */
    int rc = wsrt_adopt(srv, c, (const uint8_t *)head, used); /* wsrt owns c from now on */
    if (rc != WSRT_OK) fprintf(stderr, "adopt: %s\n", wsrt_last_error());
  }
  wsrt_server_shutdown(srv, 5000);
  atomic_store(&stopping, 1);
  pthread_join(t, NULL);
  wsrt_server_free(srv);
  close(lfd);
  close(sfd);
  return 0;
}
