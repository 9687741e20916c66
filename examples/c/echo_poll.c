/* echo_poll: a wsrt echo server in C, one thread blocked in wsrt_poll.
 * Usage: echo_poll [listen-address [workers [echo|broadcast]]]
 *   (defaults 127.0.0.1:0, 2, echo; prints "listening on PORT"; bench/run uses the extra
 *   arguments to measure the price of the C ABI)
 * Stops on SIGTERM/SIGINT: graceful shutdown, then wsrt_server_free. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wsrt.h>

static volatile sig_atomic_t stop = 0;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s (%s)\n", what, wsrt_strerror(rc), wsrt_last_error());
    exit(1);
  }
  return rc;
}

int main(int argc, char **argv) {
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  wsrt_config *cfg = wsrt_config_new();
  check(wsrt_config_set(cfg, "listen", argc > 1 ? argv[1] : "127.0.0.1:0"), "listen");
  check(wsrt_config_set(cfg, "workers", argc > 2 ? argv[2] : "2"), "workers");
  int broadcast = argc > 3 && strcmp(argv[3], "broadcast") == 0;
  wsrt_server *srv = NULL;
  check(wsrt_server_start(cfg, NULL, NULL, 0, &srv), "start");
  wsrt_config_free(cfg);
  uint16_t port = 0;
  check(wsrt_server_port(srv, &port), "port");
  printf("listening on %u\n", (unsigned)port);
  fflush(stdout);

  wsrt_batch *batch = wsrt_batch_new();
  while (!stop) {
    /* A short timeout so the signal flag is seen; events wake the poll at once. */
    int n = check(wsrt_poll(srv, batch, 256, 200), "poll");
    for (int i = 0; i < n; i++) {
      const wsrt_event *ev = wsrt_batch_get(batch, (size_t)i);
      if (ev->kind == WSRT_EVENT_MESSAGE) {
        if (broadcast) {
          check(wsrt_broadcast(srv, ev->data, ev->len, ev->is_text), "broadcast");
          continue;
        }
        int st = check(wsrt_send(srv, ev->conn, ev->data, ev->len, ev->is_text), "send");
        if (st == WSRT_DROPPED) fprintf(stderr, "dropped a reply to a slow client\n");
      } else if (ev->kind == WSRT_EVENT_OPEN && !broadcast) {
        fprintf(stderr, "open %llu from %s\n", (unsigned long long)ev->conn, ev->remote_addr);
      } else if (ev->kind == WSRT_EVENT_CLOSE && !broadcast) {
        fprintf(stderr, "close %llu code %u\n", (unsigned long long)ev->conn, (unsigned)ev->close_code);
      }
    }
  }
  check(wsrt_server_shutdown(srv, 5000), "shutdown");
  wsrt_batch_free(batch);
  wsrt_server_free(srv);
  return 0;
}
