// JDK 22+ (java.lang.foreign) smoke test of the wsrt C ABI, no native shim: a platform thread
// blocked in wsrt_poll decides every upgrade (the Ring / Sente shape: the request's headers
// are seen before accepting; X-Token must be "secret", else 403) and echoes every message;
// each connection carries a handle to a Java object, released by wsrt's finalizer (an
// upcall) exactly once.
// Run: java --enable-native-access=ALL-UNNAMED SmokeFfm.java /path/to/libwsrt.so [-inline]
// (-inline: WSRT_FLAG_POLL_INLINE, no wsrt thread: the worker's loop runs in the poller's wsrt_poll)
// Prints "layout: ..." (wsrt_event and wsrt_header as this program lays them out; the test
// compares that with the C compiler's offsets), "listening on PORT"; on SIGTERM shuts wsrt down, prints
// "stopped: opened N, closed N, finalized N" and exits 0.
import java.lang.foreign.*;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.lang.invoke.VarHandle;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static java.lang.foreign.ValueLayout.*;

public class SmokeFfm {
    static final int EVENT_UPGRADE = 1, EVENT_OPEN = 2, EVENT_MESSAGE = 3, EVENT_CLOSE = 6;
    static final int FLAG_DECIDE_UPGRADES = 1, FLAG_POLL_INLINE = 2;
    static final Linker LINKER = Linker.nativeLinker();
    static final ValueLayout SIZE_T = (ValueLayout) LINKER.canonicalLayouts().get("size_t");
    static final ValueLayout BOOL = (ValueLayout) LINKER.canonicalLayouts().get("bool");

    /** struct wsrt_event, field by field as in wsrt.h, with the C ABI's padding. */
    static final StructLayout EVENT = MemoryLayout.structLayout(
            JAVA_INT.withName("kind"),
            MemoryLayout.paddingLayout(4),
            JAVA_LONG.withName("conn"),
            ADDRESS.withName("data"),
            SIZE_T.withName("len"),
            BOOL.withName("is_text"),
            MemoryLayout.paddingLayout(1),
            JAVA_SHORT.withName("close_code"),
            BOOL.withName("clean"),
            MemoryLayout.paddingLayout(3),
            ADDRESS.withName("remote_addr"),
            ADDRESS.withName("path"),
            ADDRESS.withName("query"),
            ADDRESS.withName("subprotocol"),
            ADDRESS.withName("origin"),
            ADDRESS.withName("headers"),
            SIZE_T.withName("header_count"),
            ADDRESS.withName("user_data")).withName("wsrt_event");
    /** struct wsrt_header. */
    static final StructLayout HEADER = MemoryLayout.structLayout(
            ADDRESS.withName("name"), ADDRESS.withName("value")).withName("wsrt_header");
    static final long HEADER_NAME = HEADER.byteOffset(groupElement("name")),
            HEADER_VALUE = HEADER.byteOffset(groupElement("value"));
    static final VarHandle HEADERS = field("headers"), HEADER_COUNT = field("header_count");
    static final VarHandle KIND = field("kind"), CONN = field("conn"), DATA = field("data"),
            LEN = field("len"), IS_TEXT = field("is_text"), CLOSE_CODE = field("close_code"),
            PATH = field("path"), USER_DATA = field("user_data");

    static VarHandle field(String name) {
        return EVENT.varHandle(groupElement(name));
    }

    /** Java objects attached to connections, by the integer wsrt carries as user data. */
    static final Map<Long, Object> HANDLES = new ConcurrentHashMap<>();
    static final AtomicLong NEXT_HANDLE = new AtomicLong(1);
    static final AtomicLong opened = new AtomicLong(), closed = new AtomicLong(), finalized = new AtomicLong();

    /** wsrt's finalizer (an upcall; may run on the polling thread or a wsrt thread). */
    static void release(MemorySegment data) {
        if (HANDLES.remove(data.address()) == null) throw new IllegalStateException("released twice");
        finalized.incrementAndGet();
    }

    record Connection(long conn, String path) {}

    static MethodHandle configNew, configSet, configFree, start, port, batchNew, batchFree, poll,
            batchGet, send, setData, shutdown, free, lastError, accept, reject;
    static Arena arena;

    public static void main(String[] args) throws Throwable {
        System.out.println("layout: " + describe(EVENT) + "; " + describe(HEADER));

        arena = Arena.ofShared(); // the library, strings and the finalizer stub
        SymbolLookup lib = SymbolLookup.libraryLookup(args[0], arena);
        configNew = fn(lib, "wsrt_config_new", FunctionDescriptor.of(ADDRESS));
        configSet = fn(lib, "wsrt_config_set", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS));
        configFree = fn(lib, "wsrt_config_free", FunctionDescriptor.ofVoid(ADDRESS));
        start = fn(lib, "wsrt_server_start", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, JAVA_INT, ADDRESS));
        port = fn(lib, "wsrt_server_port", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS));
        batchNew = fn(lib, "wsrt_batch_new", FunctionDescriptor.of(ADDRESS));
        batchFree = fn(lib, "wsrt_batch_free", FunctionDescriptor.ofVoid(ADDRESS));
        poll = fn(lib, "wsrt_poll", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, SIZE_T, JAVA_INT));
        batchGet = fn(lib, "wsrt_batch_get", FunctionDescriptor.of(ADDRESS, ADDRESS, SIZE_T));
        send = fn(lib, "wsrt_send", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, SIZE_T, BOOL));
        setData = fn(lib, "wsrt_set_data", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, ADDRESS));
        shutdown = fn(lib, "wsrt_server_shutdown", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT));
        free = fn(lib, "wsrt_server_free", FunctionDescriptor.ofVoid(ADDRESS));
        lastError = fn(lib, "wsrt_last_error", FunctionDescriptor.of(ADDRESS));
        accept = fn(lib, "wsrt_accept", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, ADDRESS, SIZE_T));
        reject = fn(lib, "wsrt_reject", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_SHORT, ADDRESS, ADDRESS, SIZE_T));
        MemorySegment finalizer = LINKER.upcallStub(
                MethodHandles.lookup().findStatic(SmokeFfm.class, "release",
                        MethodType.methodType(void.class, MemorySegment.class)),
                FunctionDescriptor.ofVoid(ADDRESS), arena);

        MemorySegment cfg = (MemorySegment) configNew.invokeExact();
        check((int) configSet.invokeExact(cfg, arena.allocateFrom("listen"), arena.allocateFrom("127.0.0.1:0")), "listen");
        boolean inline = args.length > 1 && args[1].equals("-inline"); // inline drives one worker
        check((int) configSet.invokeExact(cfg, arena.allocateFrom("workers"), arena.allocateFrom(inline ? "1" : "2")), "workers");
        MemorySegment out = arena.allocate(ADDRESS);
        int flags = FLAG_DECIDE_UPGRADES | (inline ? FLAG_POLL_INLINE : 0);
        int rc = (int) start.invokeExact(cfg, MemorySegment.NULL, MemorySegment.NULL, flags, out);
        configFree.invokeExact(cfg);
        check(rc, "start");
        MemorySegment srv = out.get(ADDRESS, 0);
        MemorySegment portOut = arena.allocate(JAVA_SHORT);
        check((int) port.invokeExact(srv, portOut), "port");

        AtomicBoolean stopping = new AtomicBoolean();
        Thread poller = new Thread(() -> {
            try {
                MemorySegment batch = (MemorySegment) batchNew.invokeExact();
                while (true) {
                    // Wait at most 1 s between looks at the stop flag, then drain with 0 once
                    // shutdown is done (a -1 poll would also return 0 once wsrt stopped).
                    boolean last = stopping.get();
                    int n = (int) poll.invokeExact(srv, batch, 256L, last ? 0 : 1000);
                    check(n, "poll");
                    for (int i = 0; i < n; i++) {
                        MemorySegment ev = ((MemorySegment) batchGet.invokeExact(batch, (long) i)).reinterpret(EVENT.byteSize());
                        handle(srv, ev, finalizer);
                    }
                    if (last && n == 0) break;
                }
                batchFree.invokeExact(batch); // finalizes the last CLOSE events' data
            } catch (Throwable t) {
                t.printStackTrace();
                System.exit(1);
            }
        }, "wsrt-poll");
        poller.start();

        // SIGTERM: stop wsrt in order and exit 0 (a shutdown hook would exit with 143).
        sun.misc.Signal.handle(new sun.misc.Signal("TERM"), sig -> {
            try {
                check((int) shutdown.invokeExact(srv, 5000), "shutdown");
            } catch (Throwable t) {
                t.printStackTrace();
            }
            stopping.set(true);
        });
        System.out.println("listening on " + Short.toUnsignedInt(portOut.get(JAVA_SHORT, 0)));

        poller.join();
        free.invokeExact(srv);
        System.out.println("stopped: opened " + opened + ", closed " + closed + ", finalized " + finalized);
        arena.close();
    }

    static void handle(MemorySegment srv, MemorySegment ev, MemorySegment finalizer) throws Throwable {
        long conn = (long) CONN.get(ev, 0L);
        switch ((int) KIND.get(ev, 0L)) {
            case EVENT_UPGRADE -> {
                // Decide from the request (a real host would check a session cookie / CSRF).
                MemorySegment headers = ((MemorySegment) HEADERS.get(ev, 0L))
                        .reinterpret(HEADER.byteSize() * (long) HEADER_COUNT.get(ev, 0L));
                String token = null;
                for (MemorySegment h : headers.elements(HEADER).toList()) {
                    if (cString(h.get(ADDRESS, HEADER_NAME)).equalsIgnoreCase("x-token")) {
                        token = cString(h.get(ADDRESS, HEADER_VALUE));
                    }
                }
                int rc;
                if ("secret".equals(token)) {
                    try (Arena call = Arena.ofConfined()) {
                        MemorySegment extra = call.allocate(HEADER); // added to the 101
                        extra.set(ADDRESS, HEADER_NAME, call.allocateFrom("X-Host"));
                        extra.set(ADDRESS, HEADER_VALUE, call.allocateFrom("ffm"));
                        rc = (int) accept.invokeExact(srv, conn, MemorySegment.NULL, extra, 1L);
                    }
                } else {
                    try (Arena call = Arena.ofConfined()) {
                        rc = (int) reject.invokeExact(srv, conn, (short) 403,
                                call.allocateFrom("token required"), MemorySegment.NULL, 0L);
                    }
                }
                if (rc < 0) System.err.println("accept/reject failed: " + rc);
            }
            case EVENT_OPEN -> {
                opened.incrementAndGet();
                String path = cString((MemorySegment) PATH.get(ev, 0L));
                long h = NEXT_HANDLE.getAndIncrement();
                HANDLES.put(h, new Connection(conn, path));
                if ((int) setData.invokeExact(srv, conn, MemorySegment.ofAddress(h), finalizer) != 0) {
                    HANDLES.remove(h); // WSRT_ERR_GONE: wsrt did not take it
                }
            }
            case EVENT_MESSAGE -> {
                int s = (int) send.invokeExact(srv, conn, (MemorySegment) DATA.get(ev, 0L),
                        (long) LEN.get(ev, 0L), (boolean) IS_TEXT.get(ev, 0L));
                if (s < 0) System.err.println("send failed: " + s);
            }
            case EVENT_CLOSE -> {
                // The data attached at OPEN comes back with CLOSE, still alive.
                Object c = HANDLES.get(((MemorySegment) USER_DATA.get(ev, 0L)).address());
                if (!(c instanceof Connection cc) || cc.conn() != conn) {
                    throw new IllegalStateException("CLOSE without its data: " + conn + " code " + (short) CLOSE_CODE.get(ev, 0L));
                }
                closed.incrementAndGet();
            }
            default -> {
            }
        }
    }

    /** "NAME size N, FIELD OFFSET, ..." (padding left out), as the test prints it from C. */
    static String describe(StructLayout layout) {
        StringBuilder out = new StringBuilder(layout.name().orElseThrow() + " size " + layout.byteSize());
        for (MemoryLayout m : layout.memberLayouts()) {
            m.name().ifPresent(name -> out.append(", ").append(name).append(' ')
                    .append(layout.byteOffset(groupElement(name))));
        }
        return out.toString();
    }

    static String cString(MemorySegment p) {
        return p.equals(MemorySegment.NULL) ? null : p.reinterpret(Long.MAX_VALUE).getString(0);
    }

    static void check(int rc, String what) throws Throwable {
        if (rc < 0) {
            MemorySegment err = ((MemorySegment) lastError.invokeExact()).reinterpret(Long.MAX_VALUE);
            throw new IllegalStateException(what + ": " + err.getString(0));
        }
    }

    static MethodHandle fn(SymbolLookup lib, String name, FunctionDescriptor d) {
        return LINKER.downcallHandle(lib.find(name).orElseThrow(), d);
    }
}
