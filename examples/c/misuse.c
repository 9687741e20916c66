/* misuse: calls the C ABI wrongly on purpose and checks every answer. Prints one line per
 * failed check and a final "N passed, N failed"; exit status 1 if any check failed.
 * Also: finalizers and release callbacks run exactly once, and sends from 8 threads while
 * connections open and close neither crash nor reach a wrong client. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wsrt.h>

static int passed, failed;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (cond) {                                                            \
      passed++;                                                            \
    } else {                                                               \
      failed++;                                                            \
      printf("FAILED line %d: %s (last error: %s)\n", __LINE__, #cond,     \
             wsrt_last_error());                                           \
    }                                                                      \
  } while (0)

static atomic_int finalized, released;
static void finalize(void *p) { (void)p; atomic_fetch_add(&finalized, 1); }
static void release(void *p) { (void)p; atomic_fetch_add(&released, 1); }

static const char *REQ =
    "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/* A raw client: connect, upgrade, read the 101 head. */
static int ws_client(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
  if (write(fd, REQ, strlen(REQ)) < 0) return -1;
  char buf[1024];
  size_t used = 0;
  while (used < sizeof buf) {
    ssize_t r = read(fd, buf + used, 1);
    if (r <= 0) return -1;
    used += (size_t)r;
    if (used >= 4 && memcmp(buf + used - 4, "\r\n\r\n", 4) == 0) break;
  }
  return fd;
}

/* Wait (bounded) for the next event of a kind; returns its connection id or 0. */
static uint64_t wait_kind(wsrt_server *srv, wsrt_batch *b, uint32_t kind) {
  for (int tries = 0; tries < 100; tries++) {
    int n = wsrt_poll(srv, b, 1, 100);
    for (int i = 0; i < n; i++) {
      const wsrt_event *ev = wsrt_batch_get(b, (size_t)i);
      if (ev->kind == kind) return ev->conn;
    }
  }
  return 0;
}

struct sender { wsrt_server *srv; _Atomic uint64_t *ids; int n; };
static void *send_loop(void *arg) {
  struct sender *s = arg;
  for (int round = 0; round < 2000; round++) {
    uint64_t id = atomic_load(&s->ids[round % s->n]);
    int rc = wsrt_send(s->srv, id, (const uint8_t *)"spam", 4, true);
    if (rc < 0 || rc > WSRT_GONE) atomic_fetch_add(&released, 1000000); /* poison the count */
  }
  return NULL;
}

int main(void) {
  /* NULLs everywhere: errors, never crashes. */
  CHECK(wsrt_config_set(NULL, "listen", "x") == WSRT_ERR_NULL);
  wsrt_config *cfg = wsrt_config_new();
  CHECK(wsrt_config_set(cfg, NULL, "x") == WSRT_ERR_NULL);
  CHECK(wsrt_config_set(cfg, "listen", NULL) == WSRT_ERR_NULL);
  CHECK(wsrt_config_set(cfg, "no_such_option", "1") == WSRT_ERR_OPTION);
  CHECK(strstr(wsrt_last_error(), "no_such_option") != NULL);
  CHECK(wsrt_config_set(cfg, "max_message_size", "lots") == WSRT_ERR_OPTION);
  CHECK(strstr(wsrt_last_error(), "max_message_size") != NULL);
  CHECK(wsrt_server_start(NULL, NULL, NULL, 0, NULL) == WSRT_ERR_NULL);
  CHECK(wsrt_send(NULL, 1, (const uint8_t *)"x", 1, true) == WSRT_ERR_NULL);
  CHECK(wsrt_poll(NULL, NULL, 1, 0) == WSRT_ERR_NULL);
  CHECK(wsrt_batch_len(NULL) == 0);
  CHECK(wsrt_batch_get(NULL, 0) == NULL);
  CHECK(wsrt_conn_send(NULL, (const uint8_t *)"x", 1, true) == WSRT_ERR_NULL);
  CHECK(strlen(wsrt_strerror(WSRT_ERR_GONE)) > 0);
  CHECK(strcmp(wsrt_version(), "") != 0);
  wsrt_config_free(NULL);
  wsrt_server_free(NULL);
  wsrt_batch_free(NULL);

  wsrt_config_set(cfg, "listen", "127.0.0.1:0");
  wsrt_config_set(cfg, "workers", "2");
  wsrt_server *srv = NULL;
  CHECK(wsrt_server_start(cfg, NULL, NULL, 0, &srv) == WSRT_OK);
  uint16_t port = 0;
  CHECK(wsrt_server_port(srv, &port) == WSRT_OK && port != 0);
  CHECK(wsrt_server_port(srv, NULL) == WSRT_ERR_NULL);
  wsrt_batch *b = wsrt_batch_new();
  CHECK(wsrt_poll(srv, NULL, 1, 0) == WSRT_ERR_NULL);
  CHECK(wsrt_poll(srv, b, 1, 0) == 0);

  /* Unknown and stale ids. */
  CHECK(wsrt_send(srv, 12345, (const uint8_t *)"x", 1, true) == WSRT_GONE);
  CHECK(wsrt_close(srv, 12345, 1000, NULL) == WSRT_ERR_GONE);
  CHECK(wsrt_set_data(srv, 12345, &passed, finalize) == WSRT_ERR_GONE);
  size_t buffered = 0;
  CHECK(wsrt_buffered_amount(srv, 12345, &buffered) == WSRT_ERR_GONE);
  int fd = ws_client(port);
  CHECK(fd >= 0);
  uint64_t id = wait_kind(srv, b, WSRT_EVENT_OPEN);
  CHECK(id != 0);
  CHECK(wsrt_send(srv, id, (const uint8_t *)"\xff\xfe", 2, true) == WSRT_ERR_INVALID);
  CHECK(wsrt_send(srv, id, NULL, 3, false) == WSRT_ERR_NULL);
  CHECK(wsrt_reject(srv, id, 200, NULL, NULL, 0) == WSRT_ERR_INVALID);
  CHECK(wsrt_set_data(srv, id, &passed, finalize) == WSRT_OK);
  static const uint8_t payload[] = "owned buffer";
  CHECK(wsrt_send_owned(srv, id, payload, sizeof payload - 1, true, release, NULL) == WSRT_SENT);
  CHECK(wsrt_send_owned(srv, 999, payload, 3, true, release, NULL) == WSRT_GONE);
  /* The owned frame went through the worker's inbox after the data: once it arrives, the data
   * is attached, so the close below finalizes it through the CLOSE event (not on a worker). */
  char frame[2 + sizeof payload - 1];
  size_t got = 0;
  while (got < sizeof frame) {
    ssize_t r = read(fd, frame + got, sizeof frame - got);
    if (r <= 0) break;
    got += (size_t)r;
  }
  CHECK(got == sizeof frame && memcmp(frame + 2, payload, sizeof payload - 1) == 0);
  close(fd);
  CHECK(wait_kind(srv, b, WSRT_EVENT_CLOSE) == id);
  wsrt_poll(srv, b, 16, 0); /* recycling the batch finalizes the closed connection's data */
  CHECK(atomic_load(&finalized) == 1);
  CHECK(wsrt_send(srv, id, (const uint8_t *)"x", 1, true) == WSRT_GONE);

  /* 8 threads sending while connections open and close. */
  enum { N = 8 };
  _Atomic uint64_t ids[N];
  for (int i = 0; i < N; i++) atomic_store(&ids[i], 0);
  struct sender s = {srv, ids, N};
  pthread_t t[8];
  for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, send_loop, &s);
  for (int round = 0; round < 40; round++) {
    int c = ws_client(port);
    uint64_t cid = wait_kind(srv, b, WSRT_EVENT_OPEN);
    atomic_store(&ids[round % N], cid);
    wsrt_set_data(srv, cid, &passed, finalize);
    close(c);
  }
  for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  CHECK(atomic_load(&released) < 1000000);

  /* Double shutdown, calls after shutdown, free with data still attached. */
  CHECK(wsrt_server_shutdown(srv, 5000) == WSRT_OK);
  CHECK(wsrt_server_shutdown(srv, 5000) == WSRT_OK);
  CHECK(wsrt_send(srv, id, (const uint8_t *)"x", 1, true) == WSRT_GONE);
  CHECK(wsrt_publish(srv, "t", (const uint8_t *)"x", 1, true) == WSRT_ERR_STOPPED);
  wsrt_batch_free(b);
  wsrt_server_free(srv);
  wsrt_config_free(cfg);
  /* Every attached datum finalized exactly once: 1 + 40; the owned buffers released twice. */
  CHECK(atomic_load(&finalized) == 41);
  CHECK(atomic_load(&released) == 2);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
