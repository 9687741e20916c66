// JDK 17 (JNI) smoke test of the wsrt C ABI: a thread blocked in poll() gets events as Java
// objects and echoes through send(). Prints "listening on PORT"; on SIGTERM prints "stopped".
// Run: java -Djava.library.path=DIR SmokeJni   (libwsrt_jni.so in DIR, with libwsrt.a inside)
public class SmokeJni {
    static final int EVENT_MESSAGE = 3;

    /** One event, as the shim copies it out of the batch. */
    public static final class Event {
        public int kind;
        public long conn;
        public byte[] data;
        public boolean text;
    }

    static native int start();               // returns the port
    static native Event[] poll(int max, int timeoutMs);
    static native int send(long conn, byte[] data, boolean text);
    static native void stop();

    public static void main(String[] args) throws Exception {
        System.loadLibrary("wsrt_jni");
        System.out.println("listening on " + start());
        var running = new java.util.concurrent.atomic.AtomicBoolean(true);
        Thread poller = new Thread(() -> {
            while (running.get()) {
                for (Event e : poll(256, 200)) {
                    if (e.kind == EVENT_MESSAGE) send(e.conn, e.data, e.text);
                }
            }
        }, "wsrt-poll");
        poller.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            running.set(false);
            try {
                poller.join();
            } catch (InterruptedException ignored) {
            }
            stop();
            System.out.println("stopped");
        }));
        poller.join();
    }
}
