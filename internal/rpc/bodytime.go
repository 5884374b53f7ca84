package rpc

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BodyTime bounds how long a request body may take to arrive: Timeout plus
// its size at MinRate bytes per second. A body that falls further behind
// gets its connection (HTTP/1.1) or stream (HTTP/2) closed.
type BodyTime struct {
	Timeout time.Duration // 0: no bound
	MinRate int64
}

// streamingBodyPrefixes are the bidirectional streams, whose clients send
// messages over the stream's whole life: their bodies never end in time.
var streamingBodyPrefixes = []string{"/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"}

// limitBodyTime puts a read deadline on every request body that follows its
// bytes: it starts at Timeout and moves on by one second for every MinRate
// bytes read, and is lifted at the body's end, so a server stream (whose
// request is one small message) lives on after it. Nothing else bounds a
// body: ReadHeaderTimeout ends with the headers, and a server-wide
// ReadTimeout would cut streams.
func limitBodyTime(next http.Handler, bt BodyTime, reg prometheus.Registerer) http.Handler {
	if bt.Timeout <= 0 || bt.MinRate <= 0 {
		return next
	}
	expired := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_request_body_timeouts_total",
		Help: "Requests whose body arrived too slowly; their connection or stream was closed.",
	})
	reg.MustRegister(expired)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || streamingBody(r) {
			next.ServeHTTP(w, r)
			return
		}
		b := &timedBody{
			ReadCloser: r.Body,
			ctl:        http.NewResponseController(w),
			header:     w.Header(),
			http1:      r.ProtoMajor == 1,
			bt:         bt,
			start:      time.Now(),
			expired:    expired,
		}
		b.deadline = b.start.Add(bt.Timeout)
		if err := b.ctl.SetReadDeadline(b.deadline); err != nil {
			next.ServeHTTP(w, r) // a writer without deadlines: nothing to bound
			return
		}
		r.Body = b
		next.ServeHTTP(w, r)
	})
}

// streamingBody reports whether r is a bidirectional stream's. Only HTTP/2
// carries one: over HTTP/1.1 connect refuses it unread, and net/http then
// reads what is left of the body, which without a deadline a stalled client
// held open forever.
func streamingBody(r *http.Request) bool {
	if r.ProtoMajor < 2 {
		return false
	}
	for _, p := range streamingBodyPrefixes {
		if strings.HasPrefix(r.URL.Path, p) {
			return true
		}
	}
	return false
}

// timedBody is a request body under limitBodyTime's deadline.
type timedBody struct {
	io.ReadCloser
	ctl      *http.ResponseController
	header   http.Header
	http1    bool
	bt       BodyTime
	start    time.Time
	read     int64
	deadline time.Time // zero once lifted
	expired  prometheus.Counter
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.deadline.IsZero() {
		return n, err
	}
	b.read += int64(n)
	switch {
	case err == io.EOF:
		b.deadline = time.Time{}
		_ = b.ctl.SetReadDeadline(b.deadline)
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.deadline = time.Time{}
		b.expired.Inc()
		if b.http1 {
			// Whatever is left of the body must not be read as the next
			// request, nor waited for.
			b.header.Set("Connection", "close")
		}
		return n, fmt.Errorf("request body arrived slower than %d bytes per second: %w", b.bt.MinRate, err)
	case n > 0:
		b.extend()
	}
	return n, err
}

// extend moves the deadline to what the bytes read so far have earned, once
// it is within half a Timeout: a body arriving faster than MinRate moves it
// seldom (on HTTP/2 each move is a message to the connection's goroutine).
func (b *timedBody) extend() {
	now := time.Now()
	if b.deadline.Sub(now) >= b.bt.Timeout/2 {
		return
	}
	earned := b.start.Add(b.bt.Timeout + time.Duration(float64(b.read)/float64(b.bt.MinRate)*float64(time.Second)))
	if earned.After(b.deadline) {
		b.deadline = earned
		_ = b.ctl.SetReadDeadline(earned)
	}
}
