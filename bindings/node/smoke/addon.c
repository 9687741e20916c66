/* N-API smoke addon for the wsrt C ABI. The event fd is watched by a uv_poll_t on Node's own
 * loop (no extra thread, no busy polling); when it is readable the addon polls with timeout 0
 * until the queue is empty and calls one JS callback per event. Each connection carries an
 * N-API reference (to the object JS returned for its OPEN event), released by wsrt's
 * finalizer on the JS thread.
 *
 * Build: cc -shared -fPIC -I/usr/include/node -I include addon.c target/release/libwsrt.a \
 *          -lpthread -ldl -lm -o wsrt_smoke.node
 *
 * JS API: start(cb(kind, conn: bigint, data, obj)) -> port   (obj: CLOSE only; OPEN's
 *         return value is the connection's object), send(conn, string | Buffer) -> status,
 *         adopt(fd, head: Buffer) -> status (the fd is dup()ed), stop() -> finalized count. */
#include <node_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include <wsrt.h>

static struct {
  napi_env env;
  wsrt_server *srv;
  wsrt_batch *batch;
  uv_poll_t watcher;
  napi_ref callback;
  napi_async_context async;
  unsigned finalized;
  pthread_t js_thread;
} g;

#define NAPI(call)                                                                        \
  do {                                                                                    \
    if ((call) != napi_ok) {                                                              \
      napi_throw_error(env, NULL, #call " failed");                                       \
      return NULL;                                                                        \
    }                                                                                     \
  } while (0)

static napi_value throw_wsrt(napi_env env, const char *what) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s", what, wsrt_last_error());
  napi_throw_error(env, NULL, msg);
  return NULL;
}

/* wsrt's finalizer for a connection's data. In poll mode it runs inside wsrt_poll /
 * wsrt_batch_free / wsrt_server_free, all called on the JS thread here, so deleting the
 * reference is allowed -- except when the connection closed while wsrt_set_data was in
 * flight (or data was replaced): then wsrt runs it on a worker thread, where N-API must not
 * be called. Say so (the test fails on stderr) and leak the reference rather than crash. */
static void release_ref(void *data) {
  if (!pthread_equal(pthread_self(), g.js_thread)) {
    fprintf(stderr, "wsrt finalizer ran on a non-JS thread: N-API reference leaked\n");
    return;
  }
  napi_delete_reference(g.env, (napi_ref)data);
  g.finalized++;
}

/* Rethrow an exception the JS callback left pending as an uncaught exception. */
static void report_exception(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
}

static void dispatch(napi_env env, const wsrt_event *ev, napi_value cb, napi_value recv) {
  napi_value argv[4];
  napi_create_uint32(env, ev->kind, &argv[0]);
  napi_create_bigint_uint64(env, ev->conn, &argv[1]);
  napi_get_undefined(env, &argv[2]);
  napi_get_undefined(env, &argv[3]);
  switch (ev->kind) {
  case WSRT_EVENT_MESSAGE:
    if (ev->is_text) {
      napi_create_string_utf8(env, (const char *)ev->data, ev->len, &argv[2]);
    } else {
      void *copy;
      napi_create_buffer_copy(env, ev->len, ev->data, &copy, &argv[2]);
    }
    break;
  case WSRT_EVENT_OPEN:
    napi_create_string_utf8(env, ev->path, NAPI_AUTO_LENGTH, &argv[2]);
    break;
  case WSRT_EVENT_CLOSE:
    napi_create_uint32(env, ev->close_code, &argv[2]);
    if (ev->user_data) napi_get_reference_value(env, (napi_ref)ev->user_data, &argv[3]);
    break;
  }
  napi_value result;
  if (napi_make_callback(env, g.async, recv, cb, 4, argv, &result) != napi_ok) {
    report_exception(env);
    return;
  }
  napi_valuetype type;
  if (ev->kind == WSRT_EVENT_OPEN && napi_typeof(env, result, &type) == napi_ok &&
      type == napi_object) {
    napi_ref ref;
    napi_create_reference(env, result, 1, &ref);
    if (wsrt_set_data(g.srv, ev->conn, ref, release_ref) != WSRT_OK) {
      napi_delete_reference(env, ref); /* WSRT_ERR_GONE: wsrt did not take it */
    }
  }
}

/* Poll with timeout 0 until the queue is empty, one JS call per event. */
static void drain(napi_env env) {
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, global;
  napi_get_reference_value(env, g.callback, &cb);
  napi_get_global(env, &global);
  int n;
  while ((n = wsrt_poll(g.srv, g.batch, 256, 0)) > 0) {
    for (int i = 0; i < n; i++) {
      napi_handle_scope inner;
      napi_open_handle_scope(env, &inner);
      dispatch(env, wsrt_batch_get(g.batch, (size_t)i), cb, global);
      napi_close_handle_scope(env, inner);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)events;
  if (status < 0) return; /* the fd is wsrt's eventfd: no error is expected */
  drain(g.env);
}

/* start(callback) -> port */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (g.srv) {
    napi_throw_error(env, NULL, "already started");
    return NULL;
  }
  wsrt_config *cfg = wsrt_config_new();
  if (wsrt_config_set(cfg, "listen", "127.0.0.1:0") != WSRT_OK ||
      wsrt_config_set(cfg, "workers", "2") != WSRT_OK ||
      wsrt_server_start(cfg, NULL, NULL, 0, &g.srv) != WSRT_OK) {
    wsrt_config_free(cfg);
    return throw_wsrt(env, "wsrt_server_start");
  }
  wsrt_config_free(cfg);
  g.env = env;
  g.js_thread = pthread_self();
  g.batch = wsrt_batch_new();
  g.finalized = 0;
  NAPI(napi_create_reference(env, argv[0], 1, &g.callback));
  napi_value resource, name;
  NAPI(napi_create_object(env, &resource));
  NAPI(napi_create_string_utf8(env, "wsrt", NAPI_AUTO_LENGTH, &name));
  NAPI(napi_async_init(env, resource, name, &g.async));
  int fd;
  uint16_t port;
  if (wsrt_event_fd(g.srv, &fd) != WSRT_OK || wsrt_server_port(g.srv, &port) != WSRT_OK) {
    return throw_wsrt(env, "wsrt_event_fd");
  }
  uv_loop_t *loop;
  NAPI(napi_get_uv_event_loop(env, &loop));
  if (uv_poll_init(loop, &g.watcher, fd) != 0 ||
      uv_poll_start(&g.watcher, UV_READABLE, on_readable) != 0) {
    napi_throw_error(env, NULL, "uv_poll on wsrt_event_fd failed");
    return NULL;
  }
  napi_value out;
  NAPI(napi_create_uint32(env, port, &out));
  return out;
}

/* send(conn: bigint, data: string | Buffer) -> status */
static napi_value send_msg(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint64_t conn;
  bool lossless;
  NAPI(napi_get_value_bigint_uint64(env, argv[0], &conn, &lossless));
  bool is_buffer;
  NAPI(napi_is_buffer(env, argv[1], &is_buffer));
  int rc;
  if (is_buffer) {
    void *data;
    size_t len;
    NAPI(napi_get_buffer_info(env, argv[1], &data, &len));
    rc = wsrt_send(g.srv, conn, data, len, false);
  } else {
    size_t len;
    NAPI(napi_get_value_string_utf8(env, argv[1], NULL, 0, &len));
    char *text = malloc(len + 1);
    if (!text) {
      napi_throw_error(env, NULL, "out of memory");
      return NULL;
    }
    napi_get_value_string_utf8(env, argv[1], text, len + 1, &len);
    rc = wsrt_send(g.srv, conn, (const uint8_t *)text, len, true);
    free(text);
  }
  napi_value out;
  NAPI(napi_create_int32(env, rc, &out));
  return out;
}

/* adopt(fd, head: Buffer) -> status: wsrt takes a dup of Node's socket fd (Node keeps and
 * closes its own) and the bytes already read. */
static napi_value adopt(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  NAPI(napi_get_value_int32(env, argv[0], &fd));
  void *head;
  size_t len;
  NAPI(napi_get_buffer_info(env, argv[1], &head, &len));
  int copy = fd >= 0 ? dup(fd) : -1;
  if (copy < 0) {
    napi_throw_error(env, NULL, "dup of the socket fd failed");
    return NULL;
  }
  int rc = wsrt_adopt(g.srv, copy, head, len);
  napi_value out;
  NAPI(napi_create_int32(env, rc, &out));
  return out;
}

static void watcher_closed(uv_handle_t *h) { (void)h; }

/* stop() -> finalized count: graceful shutdown, the last events (CLOSE) delivered to JS,
 * then everything released. Blocks the JS thread up to 5 s (see the report on the ABI:
 * there is no "stopped" signal on the event fd for an asynchronous shutdown). */
static napi_value stop(napi_env env, napi_callback_info info) {
  (void)info;
  if (!g.srv) {
    napi_throw_error(env, NULL, "not started");
    return NULL;
  }
  uv_poll_stop(&g.watcher);
  uv_close((uv_handle_t *)&g.watcher, watcher_closed);
  if (wsrt_server_shutdown(g.srv, 5000) != WSRT_OK) return throw_wsrt(env, "shutdown");
  drain(env);
  wsrt_batch_free(g.batch); /* finalizes the last CLOSE events' references */
  wsrt_server_free(g.srv);
  g.srv = NULL;
  g.batch = NULL;
  napi_async_destroy(env, g.async);
  napi_delete_reference(env, g.callback);
  napi_value out;
  NAPI(napi_create_uint32(env, g.finalized, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"send", NULL, send_msg, NULL, NULL, NULL, napi_default, NULL},
      {"adopt", NULL, adopt, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
