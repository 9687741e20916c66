/* N-API smoke addon for the wsrt C ABI: the event fd is watched by a uv_poll_t on Node's own
 * loop (no extra thread, no busy polling); events are delivered to one JS callback. */
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include <wsrt.h>

static wsrt_server *srv;
static wsrt_batch *batch;
static uv_poll_t watcher;
static napi_ref callback;
static napi_env cb_env;

#define NAPI(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, #call " failed"); return NULL; } } while (0)

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)h; (void)status; (void)events;
  napi_env env = cb_env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, global;
  napi_get_reference_value(env, callback, &cb);
  napi_get_global(env, &global);
  int n;
  while ((n = wsrt_poll(srv, batch, 256, 0)) > 0) {
    for (int i = 0; i < n; i++) {
      const wsrt_event *ev = wsrt_batch_get(batch, (size_t)i);
      napi_value argv[3];
      napi_create_uint32(env, ev->kind, &argv[0]);
      napi_create_bigint_uint64(env, ev->conn, &argv[1]);
      if (ev->kind == WSRT_EVENT_MESSAGE && ev->is_text) {
        napi_create_string_utf8(env, (const char *)ev->data, ev->len, &argv[2]);
      } else if (ev->kind == WSRT_EVENT_MESSAGE) {
        void *copy;
        napi_create_buffer_copy(env, ev->len, ev->data, &copy, &argv[2]);
      } else if (ev->kind == WSRT_EVENT_OPEN) {
        napi_create_string_utf8(env, ev->path, NAPI_AUTO_LENGTH, &argv[2]);
      } else {
        napi_get_undefined(env, &argv[2]);
      }
      napi_value result;
      napi_async_context ctx = NULL;
      napi_make_callback(env, ctx, global, cb, 3, argv, &result);
    }
  }
  napi_close_handle_scope(env, scope);
}

/* start(callback) -> port */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  NAPI(napi_create_reference(env, argv[0], 1, &callback));
  cb_env = env;
  wsrt_config *cfg = wsrt_config_new();
  wsrt_config_set(cfg, "listen", "127.0.0.1:0");
  if (wsrt_server_start(cfg, NULL, NULL, 0, &srv) != WSRT_OK) {
    wsrt_config_free(cfg);
    napi_throw_error(env, NULL, wsrt_last_error());
    return NULL;
  }
  wsrt_config_free(cfg);
  batch = wsrt_batch_new();
  int fd;
  uint16_t port;
  wsrt_event_fd(srv, &fd);
  wsrt_server_port(srv, &port);
  uv_loop_t *loop;
  NAPI(napi_get_uv_event_loop(env, &loop));
  uv_poll_init(loop, &watcher, fd);
  uv_poll_start(&watcher, UV_READABLE, on_readable);
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
    rc = wsrt_send(srv, conn, data, len, false);
  } else {
    size_t len;
    NAPI(napi_get_value_string_utf8(env, argv[1], NULL, 0, &len));
    char *text = malloc(len + 1);
    napi_get_value_string_utf8(env, argv[1], text, len + 1, &len);
    rc = wsrt_send(srv, conn, (const uint8_t *)text, len, true);
    free(text);
  }
  napi_value out;
  NAPI(napi_create_int32(env, rc, &out));
  return out;
}

/* adopt(fd, head: Buffer): wsrt takes a dup of Node's socket fd and the bytes already read. */
static napi_value adopt(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  NAPI(napi_get_value_int32(env, argv[0], &fd));
  void *head;
  size_t len;
  NAPI(napi_get_buffer_info(env, argv[1], &head, &len));
  int rc = wsrt_adopt(srv, dup(fd), head, len);
  napi_value out;
  NAPI(napi_create_int32(env, rc, &out));
  return out;
}

static void closed(uv_handle_t *h) { (void)h; }

/* stop(): graceful shutdown and release. */
static napi_value stop(napi_env env, napi_callback_info info) {
  (void)info;
  uv_poll_stop(&watcher);
  uv_close((uv_handle_t *)&watcher, closed);
  wsrt_server_shutdown(srv, 5000);
  wsrt_batch_free(batch);
  wsrt_server_free(srv);
  napi_delete_reference(env, callback);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"send", NULL, send_msg, NULL, NULL, NULL, napi_default, NULL},
      {"adopt", NULL, adopt, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 4, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
