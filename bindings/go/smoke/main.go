// Go smoke test of the wsrt C ABI: a goroutine blocked in wsrt_poll echoes messages; each
// connection carries a cgo.Handle released by wsrt's finalizer exactly once; a net/http
// handler hijacks its connection and hands it to wsrt (the gorilla Upgrade shape).
// Prints "listening on PORT" and "http listening on PORT"; on SIGTERM prints
// "finalized N opened M" and exits.
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
	"runtime/cgo"
	"sync/atomic"
	"syscall"
	"unsafe"
)

var finalized, opened int64

//export goFinalize
func goFinalize(p unsafe.Pointer) {
	h := cgo.Handle(uintptr(p))
	_ = h.Value().(string) // the per-connection Go value is still intact
	h.Delete()
	atomic.AddInt64(&finalized, 1)
}

func check(rc C.int, what string) {
	if rc < 0 {
		fmt.Fprintf(os.Stderr, "%s: %s\n", what, C.GoString(C.wsrt_last_error()))
		os.Exit(1)
	}
}

func main() {
	cfg := C.wsrt_config_new()
	for k, v := range map[string]string{"listen": "127.0.0.1:0", "workers": "2"} {
		ck, cv := C.CString(k), C.CString(v)
		check(C.wsrt_config_set(cfg, ck, cv), k)
		C.free(unsafe.Pointer(ck))
		C.free(unsafe.Pointer(cv))
	}
	var srv *C.wsrt_server
	check(C.wsrt_server_start(cfg, nil, nil, 0, &srv), "start")
	C.wsrt_config_free(cfg)
	var port C.uint16_t
	check(C.wsrt_server_port(srv, &port), "port")

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // one goroutine blocked in wsrt_poll
		defer close(done)
		batch := C.wsrt_batch_new()
		defer C.wsrt_batch_free(batch)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := C.wsrt_poll(srv, batch, 256, 100)
			for i := 0; i < int(n); i++ {
				ev := C.wsrt_batch_get(batch, C.size_t(i))
				switch ev.kind {
				case C.WSRT_EVENT_OPEN:
					atomic.AddInt64(&opened, 1)
					h := cgo.NewHandle(C.GoString(ev.remote_addr))
					if C.set_handle(srv, ev.conn, C.uintptr_t(h)) != C.WSRT_OK {
						h.Delete()
					}
				case C.WSRT_EVENT_MESSAGE:
					C.wsrt_send(srv, ev.conn, ev.data, ev.len, ev.is_text)
				}
			}
		}
	}()

	// net/http on its own port: the handler hijacks and hands the socket to wsrt.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		// Re-serialize the request head for wsrt (net/http moved Host out of the headers).
		var head bytes.Buffer
		fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, r.RequestURI, r.Host)
		r.Header.Write(&head)
		head.WriteString("\r\n")
		buffered := make([]byte, rw.Reader.Buffered())
		rw.Reader.Read(buffered) // early frames the server already read
		head.Write(buffered)
		f, err := conn.(*net.TCPConn).File() // a dup of the fd
		conn.Close()
		if err != nil {
			return
		}
		fd, _ := syscall.Dup(int(f.Fd()))
		f.Close()
		b := head.Bytes()
		C.wsrt_adopt(srv, C.int(fd), (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b)))
	}))

	fmt.Printf("listening on %d\n", int(port))
	fmt.Printf("http listening on %d\n", ln.Addr().(*net.TCPAddr).Port)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	check(C.wsrt_server_shutdown(srv, 5000), "shutdown")
	close(stop)
	<-done
	C.wsrt_server_free(srv) // finalizes whatever is still attached
	fmt.Printf("finalized %d opened %d\n", atomic.LoadInt64(&finalized), atomic.LoadInt64(&opened))
}
