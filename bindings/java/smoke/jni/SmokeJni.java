// JDK 17 (JNI) smoke test of the wsrt C ABI, the same shape as ../ffm/SmokeFfm.java: a
// platform thread blocked in poll() gets events as Java objects, decides every upgrade from
// its headers (X-Token must be "secret", else 403) and echoes through send(); each
// connection carries a JNI global ref to a Java object, deleted by wsrt's finalizer.
// Build: javac -h . -d OUT SmokeJni.java; cc -shared -fPIC -I$JAVA_HOME/include
//   -I$JAVA_HOME/include/linux -I include wsrt_jni.c libwsrt.a -lpthread -ldl -lm
//   -o OUT/libwsrt_jni.so
// Run: java -Djava.library.path=OUT -cp OUT SmokeJni — prints "listening on PORT"; on
// SIGTERM shuts wsrt down, prints "stopped: opened N, closed N, finalized N" and exits 0.
import java.util.concurrent.atomic.AtomicBoolean;

public class SmokeJni {
    static final int EVENT_UPGRADE = 1, EVENT_OPEN = 2, EVENT_MESSAGE = 3, EVENT_CLOSE = 6;

    /** One event, as the shim copies it out of the batch. */
    public static final class Event {
        public int kind;
        public long conn;
        public byte[] data;      // MESSAGE payload, CLOSE reason
        public boolean text;
        public String path;      // UPGRADE, OPEN
        public String[] headers; // UPGRADE, OPEN: name, value, name, value, ...
        public int closeCode;    // CLOSE
        public Object attached;  // CLOSE: the object given to attach()
    }

    record Connection(long conn, String path) {}

    static native int start(); // returns the port; upgrades wait for accept() / reject()
    static native int accept(long conn, String[] headers); // extra 101 headers: name, value, ...
    static native int reject(long conn, int status, String body);
    static native Event[] poll(int max, int timeoutMs); // null when the server failed
    static native void pollDone(); // frees the calling thread's batch
    static native int send(long conn, byte[] data, boolean text);
    static native int attach(long conn, Object data); // a global ref, deleted by the finalizer
    static native int shutdown(int timeoutMs);
    static native long stop(); // frees the server; returns how many refs were finalized
    static native String lastError();

    static long opened, closed; // the poller's own counters

    public static void main(String[] args) throws Exception {
        System.loadLibrary("wsrt_jni");
        int port = start();
        if (port < 0) throw new IllegalStateException("start: " + lastError());
        AtomicBoolean stopping = new AtomicBoolean();
        Thread poller = new Thread(() -> {
            while (true) {
                // Wait at most 1 s between looks at the stop flag, then drain with 0 once
                // shutdown is done (a -1 poll would also return 0 once wsrt stopped).
                boolean last = stopping.get();
                Event[] events = poll(256, last ? 0 : 1000);
                if (events == null) throw new IllegalStateException("poll: " + lastError());
                for (Event e : events) handle(e);
                if (last && events.length == 0) break;
            }
            pollDone();
        }, "wsrt-poll");
        poller.start();
        // SIGTERM: stop wsrt in order and exit 0 (a shutdown hook would exit with 143).
        sun.misc.Signal.handle(new sun.misc.Signal("TERM"), sig -> {
            if (shutdown(5000) < 0) System.err.println("shutdown: " + lastError());
            stopping.set(true);
        });
        System.out.println("listening on " + port);
        poller.join();
        long finalized = stop();
        System.out.println("stopped: opened " + opened + ", closed " + closed + ", finalized " + finalized);
    }

    static void handle(Event e) {
        switch (e.kind) {
            case EVENT_UPGRADE -> {
                // Decide from the request (a real host would check a session cookie / CSRF).
                String token = null;
                for (int i = 0; i + 1 < e.headers.length; i += 2) {
                    if (e.headers[i].equalsIgnoreCase("x-token")) token = e.headers[i + 1];
                }
                int rc = "secret".equals(token)
                        ? accept(e.conn, new String[] {"X-Host", "jni"})
                        : reject(e.conn, 403, "token required");
                if (rc < 0) System.err.println("accept/reject: " + lastError());
            }
            case EVENT_OPEN -> {
                opened++;
                attach(e.conn, new Connection(e.conn, e.path)); // WSRT_ERR_GONE: nothing attached
            }
            case EVENT_MESSAGE -> {
                int s = send(e.conn, e.data, e.text);
                if (s < 0) System.err.println("send failed: " + lastError());
            }
            case EVENT_CLOSE -> {
                // The object attached at OPEN comes back with CLOSE, still alive.
                if (!(e.attached instanceof Connection c) || c.conn() != e.conn) {
                    throw new IllegalStateException("CLOSE without its data: " + e.conn + " code " + e.closeCode);
                }
                closed++;
            }
            default -> {
            }
        }
    }
}
