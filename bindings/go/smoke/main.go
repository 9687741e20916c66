// Go smoke test of the wsrt C ABI: a goroutine blocked in wsrt_poll echoes messages; each
// connection carries a cgo.Handle released by wsrt's finalizer exactly once; a net/http
// handler hijacks its connection and hands it to wsrt (the gorilla Upgrade shape).
// `-inline`: WSRT_FLAG_POLL_INLINE, no wsrt thread at all: the server's one worker runs its
// loop inside that goroutine's wsrt_poll (on whichever OS thread Go gives the cgo call).
// Prints "listening on PORT" and "http listening on PORT"; on SIGTERM shuts wsrt down,
// prints "stopped: opened N, closed N, finalized N" and exits 0.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: ${SRCDIR}/../../../target/release/libwsrt.a -lpthread -ldl -lm
#include <stdlib.h>
#include <wsrt.h>
extern void goFinalize(void *);
static void finalize_trampoline(void *p) { goFinalize(p); }
static int set_handle(wsrt_server *s, uint64_t conn, uintptr_t h) {
  return wsrt_set_data(s, conn, (void *)h, finalize_trampoline);
}
*/
import "C"

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/cgo"
	"sync/atomic"
	"syscall"
	"unsafe"
)

var opened, closed, finalized int64

// goFinalize runs on the polling goroutine's thread (when its batch is polled again), in
// wsrt_server_free, or on a wsrt worker thread (cgo handles any of them).
//
//export goFinalize
func goFinalize(p unsafe.Pointer) {
	h := cgo.Handle(uintptr(p))
	if _, ok := h.Value().(string); !ok { // the per-connection Go value is still intact
		panic("bad handle")
	}
	h.Delete() // a second release would panic here
	atomic.AddInt64(&finalized, 1)
}

// check exits on a negative status with wsrt's detail. wsrt_last_error is per OS thread:
// only valid on a goroutine locked to its thread (main is); others use check(rc, what, false).
func check(rc C.int, what string, detail ...bool) {
	if rc < 0 {
		msg := C.GoString(C.wsrt_strerror(rc))
		if len(detail) == 0 || detail[0] {
			msg = C.GoString(C.wsrt_last_error())
		}
		fmt.Fprintf(os.Stderr, "%s: %s\n", what, msg)
		os.Exit(1)
	}
}

// handle dispatches one event: OPEN attaches a cgo.Handle, MESSAGE echoes.
func handle(srv *C.wsrt_server, ev *C.wsrt_event) {
	switch ev.kind {
	case C.WSRT_EVENT_OPEN:
		atomic.AddInt64(&opened, 1)
		h := cgo.NewHandle(C.GoString(ev.path))
		if C.set_handle(srv, ev.conn, C.uintptr_t(h)) != C.WSRT_OK {
			h.Delete() // WSRT_ERR_GONE: wsrt did not take it
		}
	case C.WSRT_EVENT_MESSAGE:
		if rc := C.wsrt_send(srv, ev.conn, ev.data, ev.len, ev.is_text); rc < 0 {
			fmt.Fprintf(os.Stderr, "send: %s\n", C.GoString(C.wsrt_strerror(rc)))
		}
	case C.WSRT_EVENT_CLOSE:
		atomic.AddInt64(&closed, 1)
	}
}

// dupSocket hands out a close-on-exec duplicate of the connection's fd without
// (*os.File).Fd(), which would switch the shared file description to blocking mode.
func dupSocket(c *net.TCPConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, dupErr := -1, error(nil)
	err = raw.Control(func(s uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			dupErr = e
			return
		}
		fd = int(r)
	})
	if err == nil {
		err = dupErr
	}
	return fd, err
}

func main() {
	// wsrt_last_error() is per OS thread, and a goroutine may move between threads between
	// two cgo calls: keep main on one thread so its error details are its own.
	runtime.LockOSThread()
	inline := len(os.Args) > 1 && os.Args[1] == "-inline"
	workers, flags := "2", C.uint32_t(0)
	if inline {
		workers, flags = "1", C.WSRT_FLAG_POLL_INLINE // inline drives exactly one worker
	}
	cfg := C.wsrt_config_new()
	for _, kv := range [][2]string{{"listen", "127.0.0.1:0"}, {"workers", workers}} {
		ck, cv := C.CString(kv[0]), C.CString(kv[1])
		check(C.wsrt_config_set(cfg, ck, cv), kv[0])
		C.free(unsafe.Pointer(ck))
		C.free(unsafe.Pointer(cv))
	}
	var srv *C.wsrt_server
	check(C.wsrt_server_start(cfg, nil, nil, flags, &srv), "start")
	C.wsrt_config_free(cfg)
	var port C.uint16_t
	check(C.wsrt_server_port(srv, &port), "port")

	var stopping int32
	done := make(chan struct{})
	go func() { // one goroutine blocked in wsrt_poll; no LockOSThread needed
		defer close(done)
		batch := C.wsrt_batch_new()
		defer C.wsrt_batch_free(batch) // finalizes the host data of the last CLOSE events
		for {
			// Wait at most 1 s between looks at the stop flag (a poll with -1 would also
			// return 0 once the server has stopped and its last events are taken).
			timeout := C.int(1000)
			last := atomic.LoadInt32(&stopping) == 1 // shutdown done: drain what is left
			if last {
				timeout = 0
			}
			n := C.wsrt_poll(srv, batch, 256, timeout)
			check(n, "poll", false)
			for i := 0; i < int(n); i++ {
				handle(srv, C.wsrt_batch_get(batch, C.size_t(i)))
			}
			if last && n == 0 {
				return
			}
		}
	}()

	// net/http on its own port: the handler hijacks and hands the socket to wsrt.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Authenticate here (cookies, tokens), then hand over.
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close() // wsrt owns its own duplicate
		// Re-serialize the request head for wsrt (net/http moved Host out of the headers).
		var head bytes.Buffer
		fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, r.RequestURI, r.Host)
		r.Header.Write(&head)
		head.WriteString("\r\n")
		buffered := make([]byte, rw.Reader.Buffered())
		rw.Reader.Read(buffered) // early frames the server already read
		head.Write(buffered)
		fd, err := dupSocket(conn.(*net.TCPConn))
		if err != nil {
			fmt.Fprintf(os.Stderr, "dup: %v\n", err)
			return
		}
		b := head.Bytes()
		rc := C.wsrt_adopt(srv, C.int(fd), (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b)))
		if rc != C.WSRT_OK {
			fmt.Fprintf(os.Stderr, "adopt: %s\n", C.GoString(C.wsrt_last_error()))
		}
	}))

	fmt.Printf("listening on %d\n", int(port))
	fmt.Printf("http listening on %d\n", ln.Addr().(*net.TCPAddr).Port)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ln.Close()
	check(C.wsrt_server_shutdown(srv, 5000), "shutdown") // every CLOSE event is queued now
	atomic.StoreInt32(&stopping, 1)
	<-done
	C.wsrt_server_free(srv) // finalizes whatever is still attached
	fmt.Printf("stopped: opened %d, closed %d, finalized %d\n",
		atomic.LoadInt64(&opened), atomic.LoadInt64(&closed), atomic.LoadInt64(&finalized))
}
