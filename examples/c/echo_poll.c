/* echo_poll: a wsrt echo server in C, one thread blocked in wsrt_poll.
 * Usage: echo_poll [--inline] [--decide] [--slow] [--set NAME=VALUE]... [listen-address [workers [echo|broadcast]]]
 *   defaults 127.0.0.1:0, 2 workers (1 with --inline), echo; prints "listening on PORT".
 *   --inline        WSRT_FLAG_POLL_INLINE: no worker threads; the one worker runs inside
 *                   wsrt_poll on this thread (replies are written when the next poll begins).
 *   --decide        deferred upgrades (WSRT_FLAG_DECIDE_UPGRADES): an upgrade whose query lacks
 *                   token=ok is rejected with 403; the others are accepted with a Set-Cookie.
 *   --slow          a slow host: sleeps 5 ms between polls of at most 16 events (with
 *                   max_queued_events set low, workers pause reading until it catches up).
 *   --set N=V       any option of the option table, e.g. --set max_queued_events=16.
 *   (bench/run uses the positional arguments to measure the price of the C ABI.)
 * Stops on SIGTERM/SIGINT: a sigwait thread starts the graceful shutdown; the polling thread
 * drains the last events (the CLOSE of every connection), then frees the server. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wsrt.h>

static sigset_t stop_signals;
static wsrt_server *srv;

static int check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s (%s)\n", what, wsrt_strerror(rc), wsrt_last_error());
    exit(1);
  }
  return rc;
}

/* Waits for SIGTERM/SIGINT, then shuts down: every connection gets close 1001 after its
 * queued messages and the workers stop (up to 5 s). */
static void *signal_thread(void *arg) {
  (void)arg;
  int sig = 0;
  sigwait(&stop_signals, &sig);
  int rc = wsrt_server_shutdown(srv, 5000);
  if (rc != WSRT_OK) fprintf(stderr, "shutdown: %s\n", wsrt_last_error());
  return NULL;
}

/* --decide: the host's own admission rule. */
static void decide(const wsrt_event *ev) {
  if (ev->query != NULL && strstr(ev->query, "token=ok") != NULL) {
    wsrt_header cookie = {"Set-Cookie", "session=c-example; HttpOnly"};
    check(wsrt_accept(srv, ev->conn, NULL, &cookie, 1), "accept");
  } else {
    /* WSRT_ERR_GONE is fine here: the client may have left already. */
    int rc = wsrt_reject(srv, ev->conn, 403, "token required\n", NULL, 0);
    if (rc != WSRT_OK && rc != WSRT_ERR_GONE) check(rc, "reject");
  }
}

int main(int argc, char **argv) {
  int decide_upgrades = 0, slow = 0, inline_poll = 0;
  const char *pos[3] = {"127.0.0.1:0", "2", "echo"};
  int npos = 0;
  wsrt_config *cfg = wsrt_config_new();
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--inline") == 0) {
      inline_poll = 1;
    } else if (strcmp(argv[i], "--decide") == 0) {
      decide_upgrades = 1;
    } else if (strcmp(argv[i], "--slow") == 0) {
      slow = 1;
    } else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
      char opt[256];
      snprintf(opt, sizeof opt, "%s", argv[++i]);
      char *eq = strchr(opt, '=');
      if (eq == NULL) {
        fprintf(stderr, "--set wants NAME=VALUE\n");
        return 2;
      }
      *eq = '\0';
      check(wsrt_config_set(cfg, opt, eq + 1), "--set");
    } else if (npos < 3) {
      pos[npos++] = argv[i];
    } else {
      fprintf(stderr, "usage: echo_poll [--inline] [--decide] [--slow] [--set N=V]... [listen [workers [echo|broadcast]]]\n");
      return 2;
    }
  }
  if (inline_poll && npos < 2) pos[1] = "1";
  int broadcast = strcmp(pos[2], "broadcast") == 0;
  check(wsrt_config_set(cfg, "listen", pos[0]), "listen");
  check(wsrt_config_set(cfg, "workers", pos[1]), "workers");

  /* Blocked before the workers start, so only the signal thread receives them. */
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

  uint32_t flags = (decide_upgrades ? WSRT_FLAG_DECIDE_UPGRADES : 0) |
                   (inline_poll ? WSRT_FLAG_POLL_INLINE : 0);
  check(wsrt_server_start(cfg, NULL, NULL, flags, &srv), "start");
  wsrt_config_free(cfg);
  uint16_t port = 0;
  check(wsrt_server_port(srv, &port), "port");
  pthread_t sig_thread;
  pthread_create(&sig_thread, NULL, signal_thread, NULL);
  printf("listening on %u\n", (unsigned)port);
  fflush(stdout);

  wsrt_batch *batch = wsrt_batch_new();
  size_t max = slow ? 16 : 256;
  for (;;) {
    /* Events wake the poll at once; after a shutdown, once the workers have stopped and the
     * last events (every CLOSE) are taken, it returns 0 at once: the only 0 a -1 poll gives. */
    int n = check(wsrt_poll(srv, batch, max, -1), "poll");
    if (n == 0) break;
    for (int i = 0; i < n; i++) {
      const wsrt_event *ev = wsrt_batch_get(batch, (size_t)i);
      if (ev->kind == WSRT_EVENT_UPGRADE) {
        decide(ev);
      } else if (ev->kind == WSRT_EVENT_MESSAGE) {
        if (broadcast) {
          check(wsrt_broadcast(srv, ev->data, ev->len, ev->is_text), "broadcast");
          continue;
        }
        int st = check(wsrt_send(srv, ev->conn, ev->data, ev->len, ev->is_text), "send");
        if (st == WSRT_DROPPED) fprintf(stderr, "dropped a reply to a slow client\n");
      } else if (ev->kind == WSRT_EVENT_OPEN && !broadcast) {
        fprintf(stderr, "open %llu from %s%s%s\n", (unsigned long long)ev->conn, ev->remote_addr,
                ev->query ? " query " : "", ev->query ? ev->query : "");
      } else if (ev->kind == WSRT_EVENT_CLOSE && !broadcast) {
        fprintf(stderr, "close %llu code %u\n", (unsigned long long)ev->conn, (unsigned)ev->close_code);
      }
    }
    if (slow) {
      struct timespec pause = {0, 5 * 1000 * 1000};
      nanosleep(&pause, NULL);
    }
  }
  pthread_join(sig_thread, NULL);
  wsrt_stats st;
  check(wsrt_server_stats(srv, &st), "stats");
  printf("messages in %llu out %llu\n", (unsigned long long)st.messages_in,
         (unsigned long long)st.messages_out);
  wsrt_batch_free(batch);
  wsrt_server_free(srv);
  return 0;
}
