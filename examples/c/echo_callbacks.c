/* echo_callbacks: a wsrt echo server in C using callbacks on the worker threads; replies take
 * the fast path (wsrt_conn_send). Counts messages in user data shared by the workers.
 * Usage: echo_callbacks [listen-address]; prints "listening on PORT"; stops on SIGTERM. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <wsrt.h>

static void on_message(void *user, wsrt_conn *conn, const wsrt_event *ev) {
  atomic_fetch_add((atomic_ulong *)user, 1);
  wsrt_conn_send(conn, ev->data, ev->len, ev->is_text);
}

static void on_open(void *user, wsrt_conn *conn, const wsrt_event *ev) {
  (void)user;
  /* Greets with the path, to show OPEN event data. */
  char text[256];
  int n = snprintf(text, sizeof text, "welcome to %s", ev->path);
  if (n > 0) wsrt_conn_send(conn, (const uint8_t *)text, (size_t)n, true);
}

int main(int argc, char **argv) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  /* Blocked before the workers start, so only sigwait below receives them. */
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  static atomic_ulong messages;
  wsrt_callbacks cbs = {0};
  cbs.on_open = on_open;
  cbs.on_message = on_message;
  wsrt_config *cfg = wsrt_config_new();
  wsrt_server *srv = NULL;
  if (wsrt_config_set(cfg, "listen", argc > 1 ? argv[1] : "127.0.0.1:0") != WSRT_OK ||
      wsrt_server_start(cfg, &cbs, (void *)&messages, 0, &srv) != WSRT_OK) {
    fprintf(stderr, "start: %s\n", wsrt_last_error());
    return 1;
  }
  wsrt_config_free(cfg);
  uint16_t port = 0;
  wsrt_server_port(srv, &port);
  printf("listening on %u\n", (unsigned)port);
  fflush(stdout);

  int sig = 0;
  sigwait(&set, &sig);
  wsrt_server_shutdown(srv, 5000);
  wsrt_server_free(srv);
  printf("messages %lu\n", (unsigned long)atomic_load(&messages));
  return 0;
}
