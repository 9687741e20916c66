// gorilla/websocket echo (and broadcast-on-receipt) server for wsrt's benchmarks.
// -mode echo: ReadMessage/WriteMessage per connection goroutine.
// -mode broadcast: every message received is sent to every connection, encoded once with
// websocket.PreparedMessage and queued to a writer goroutine per connection (the chat example).
package main

import (
	"flag"
	"log"
	"net/http"
	"sync"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(r *http.Request) bool { return true },
}

type client struct {
	c    *websocket.Conn
	send chan *websocket.PreparedMessage
}

var (
	mu      sync.RWMutex
	clients = map[*client]struct{}{}
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "address")
	mode := flag.String("mode", "echo", "echo or broadcast")
	flag.Parse()
	bcast := *mode == "broadcast"
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		if !bcast {
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if err := c.WriteMessage(mt, msg); err != nil {
					return
				}
			}
		}
		cl := &client{c: c, send: make(chan *websocket.PreparedMessage, 256)}
		mu.Lock()
		clients[cl] = struct{}{}
		mu.Unlock()
		go func() {
			for pm := range cl.send {
				if err := c.WritePreparedMessage(pm); err != nil {
					c.Close()
					for range cl.send {
					}
					return
				}
			}
		}()
		defer func() {
			mu.Lock()
			delete(clients, cl)
			mu.Unlock()
			close(cl.send)
		}()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			pm, err := websocket.NewPreparedMessage(mt, msg)
			if err != nil {
				return
			}
			mu.RLock()
			for o := range clients {
				select {
				case o.send <- pm:
				default: // slow client: drop, as a bounded hub does
				}
			}
			mu.RUnlock()
		}
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}
