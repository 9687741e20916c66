// JDK 22+ (java.lang.foreign) smoke test of the wsrt C ABI: a platform thread blocked in
// wsrt_poll echoes every message. Run: java --enable-native-access=ALL-UNNAMED SmokeFfm.java
// /path/to/libwsrt.so — prints "listening on PORT"; on SIGTERM prints "stopped".
import java.lang.foreign.*;
import java.lang.invoke.MethodHandle;
import static java.lang.foreign.ValueLayout.*;

public class SmokeFfm {
    static final int EVENT_MESSAGE = 3;
    // struct wsrt_event (x86-64 SysV): offsets of the fields this program reads.
    static final long KIND = 0, CONN = 8, DATA = 16, LEN = 24, IS_TEXT = 32, EVENT_SIZE = 104;

    public static void main(String[] args) throws Throwable {
        Linker linker = Linker.nativeLinker();
        Arena arena = Arena.ofShared();
        SymbolLookup lib = SymbolLookup.libraryLookup(args[0], arena);
        MethodHandle configNew = fn(linker, lib, "wsrt_config_new", FunctionDescriptor.of(ADDRESS));
        MethodHandle configSet = fn(linker, lib, "wsrt_config_set", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS));
        MethodHandle configFree = fn(linker, lib, "wsrt_config_free", FunctionDescriptor.ofVoid(ADDRESS));
        MethodHandle start = fn(linker, lib, "wsrt_server_start", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, JAVA_INT, ADDRESS));
        MethodHandle port = fn(linker, lib, "wsrt_server_port", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS));
        MethodHandle batchNew = fn(linker, lib, "wsrt_batch_new", FunctionDescriptor.of(ADDRESS));
        MethodHandle batchFree = fn(linker, lib, "wsrt_batch_free", FunctionDescriptor.ofVoid(ADDRESS));
        MethodHandle poll = fn(linker, lib, "wsrt_poll", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG, JAVA_INT));
        MethodHandle batchGet = fn(linker, lib, "wsrt_batch_get", FunctionDescriptor.of(ADDRESS, ADDRESS, JAVA_LONG));
        MethodHandle send = fn(linker, lib, "wsrt_send", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, JAVA_LONG, JAVA_BOOLEAN));
        MethodHandle shutdown = fn(linker, lib, "wsrt_server_shutdown", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT));
        MethodHandle free = fn(linker, lib, "wsrt_server_free", FunctionDescriptor.ofVoid(ADDRESS));
        MethodHandle lastError = fn(linker, lib, "wsrt_last_error", FunctionDescriptor.of(ADDRESS));

        MemorySegment cfg = (MemorySegment) configNew.invokeExact();
        int rc = (int) configSet.invokeExact(cfg, arena.allocateFrom("listen"), arena.allocateFrom("127.0.0.1:0"));
        MemorySegment out = arena.allocate(ADDRESS);
        rc |= (int) start.invokeExact(cfg, MemorySegment.NULL, MemorySegment.NULL, 0, out);
        configFree.invokeExact(cfg);
        if (rc != 0) {
            MemorySegment err = ((MemorySegment) lastError.invokeExact()).reinterpret(4096);
            throw new IllegalStateException("start: " + err.getString(0));
        }
        MemorySegment srv = out.get(ADDRESS, 0);
        MemorySegment portOut = arena.allocate(JAVA_SHORT);
        int prc = (int) port.invokeExact(srv, portOut);
        System.out.println("listening on " + Short.toUnsignedInt(portOut.get(JAVA_SHORT, 0)));

        var stop = new java.util.concurrent.atomic.AtomicBoolean();
        Thread poller = new Thread(() -> {
            try {
                MemorySegment batch = (MemorySegment) batchNew.invokeExact();
                while (!stop.get()) {
                    int n = (int) poll.invokeExact(srv, batch, 256L, 200);
                    for (int i = 0; i < n; i++) {
                        MemorySegment ev = ((MemorySegment) batchGet.invokeExact(batch, (long) i)).reinterpret(EVENT_SIZE);
                        if (ev.get(JAVA_INT, KIND) == EVENT_MESSAGE) {
                            int s = (int) send.invokeExact(srv, ev.get(JAVA_LONG, CONN), ev.get(ADDRESS, DATA),
                                    ev.get(JAVA_LONG, LEN), ev.get(JAVA_BOOLEAN, IS_TEXT));
                        }
                    }
                }
                batchFree.invokeExact(batch);
            } catch (Throwable t) {
                t.printStackTrace();
            }
        }, "wsrt-poll");
        poller.start();

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                int s = (int) shutdown.invokeExact(srv, 5000);
                stop.set(true);
                poller.join();
                free.invokeExact(srv);
                System.out.println("stopped");
            } catch (Throwable t) {
                t.printStackTrace();
            }
        }));
        poller.join();
    }

    static MethodHandle fn(Linker linker, SymbolLookup lib, String name, FunctionDescriptor d) {
        return linker.downcallHandle(lib.find(name).orElseThrow(), d);
    }
}
