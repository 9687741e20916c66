/* JNI shim for SmokeJni: thin wrappers over the wsrt C ABI (libwsrt.a is linked in). */
#include <jni.h>
#include <wsrt.h>

static wsrt_server *srv;

JNIEXPORT jint JNICALL Java_SmokeJni_start(JNIEnv *env, jclass cls) {
  (void)env; (void)cls;
  wsrt_config *cfg = wsrt_config_new();
  wsrt_config_set(cfg, "listen", "127.0.0.1:0");
  int rc = wsrt_server_start(cfg, NULL, NULL, 0, &srv);
  wsrt_config_free(cfg);
  if (rc != WSRT_OK) return -1;
  uint16_t port = 0;
  wsrt_server_port(srv, &port);
  return port;
}

JNIEXPORT jobjectArray JNICALL Java_SmokeJni_poll(JNIEnv *env, jclass cls, jint max, jint timeout) {
  (void)cls;
  /* One batch per polling thread; this smoke test has one. */
  static __thread wsrt_batch *batch;
  if (!batch) batch = wsrt_batch_new();
  jclass ecls = (*env)->FindClass(env, "SmokeJni$Event");
  jmethodID ctor = (*env)->GetMethodID(env, ecls, "<init>", "()V");
  jfieldID fkind = (*env)->GetFieldID(env, ecls, "kind", "I");
  jfieldID fconn = (*env)->GetFieldID(env, ecls, "conn", "J");
  jfieldID fdata = (*env)->GetFieldID(env, ecls, "data", "[B");
  jfieldID ftext = (*env)->GetFieldID(env, ecls, "text", "Z");
  int n = wsrt_poll(srv, batch, (size_t)max, timeout);
  if (n < 0) n = 0;
  jobjectArray out = (*env)->NewObjectArray(env, n, ecls, NULL);
  for (int i = 0; i < n; i++) {
    const wsrt_event *ev = wsrt_batch_get(batch, (size_t)i);
    jobject e = (*env)->NewObject(env, ecls, ctor);
    (*env)->SetIntField(env, e, fkind, (jint)ev->kind);
    (*env)->SetLongField(env, e, fconn, (jlong)ev->conn);
    (*env)->SetBooleanField(env, e, ftext, ev->is_text ? JNI_TRUE : JNI_FALSE);
    if (ev->data) {
      jbyteArray data = (*env)->NewByteArray(env, (jsize)ev->len);
      (*env)->SetByteArrayRegion(env, data, 0, (jsize)ev->len, (const jbyte *)ev->data);
      (*env)->SetObjectField(env, e, fdata, data);
      (*env)->DeleteLocalRef(env, data);
    }
    (*env)->SetObjectArrayElement(env, out, i, e);
    (*env)->DeleteLocalRef(env, e);
  }
  return out;
}

JNIEXPORT jint JNICALL Java_SmokeJni_send(JNIEnv *env, jclass cls, jlong conn, jbyteArray data, jboolean text) {
  (void)cls;
  jsize len = (*env)->GetArrayLength(env, data);
  jbyte *bytes = (*env)->GetByteArrayElements(env, data, NULL);
  int rc = wsrt_send(srv, (uint64_t)conn, (const uint8_t *)bytes, (size_t)len, text == JNI_TRUE);
  (*env)->ReleaseByteArrayElements(env, data, bytes, JNI_ABORT);
  return rc;
}

JNIEXPORT void JNICALL Java_SmokeJni_stop(JNIEnv *env, jclass cls) {
  (void)env; (void)cls;
  wsrt_server_shutdown(srv, 5000);
  wsrt_server_free(srv);
  srv = NULL;
}
