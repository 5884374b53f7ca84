package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"connectrpc.com/connect"
)

// restPrefix is where the REST paths of the google.api.http annotations live.
const restPrefix = "/api/v1/"

// restRequest prepares a REST request for the transcoder. It caps the body,
// and what a gzip body inflates to, because the transcoder buffers it whole
// before the handler's own limit can refuse it. It lets callers write
// ?limit=N for page_size, the name the seed's REST paths used; the
// transcoder otherwise takes only field names, and an explicit page_size
// wins. What the transcoder cannot map onto a message is invalid_argument.
func restRequest(next http.Handler, maxBytes int64, in *inflation) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if maxBytes > 0 {
			r.Body = http.MaxBytesReader(w, r.Body, maxBytes)
		}
		if strings.EqualFold(r.Header.Get("Content-Encoding"), gzipName) {
			r.Body = in.gunzipBody(r.Body)
			r.Header.Del("Content-Encoding")
			r.Header.Del("Content-Length")
			r.ContentLength = -1
		}
		trace := new(restTrace)
		r.Body = &tracedBody{ReadCloser: r.Body, failed: &trace.transport}
		r = r.WithContext(context.WithValue(r.Context(), restTraceKey{}, trace))
		q := r.URL.Query()
		if !restUTF8(r.URL.Path, q) {
			// Proto strings are UTF-8; the transcoder would quote the bytes
			// in an error it then cannot write.
			writeRESTError(w, "path and query must be valid UTF-8")
			return
		}
		if q.Has("limit") {
			if !q.Has("page_size") && !q.Has("pageSize") {
				q["page_size"] = q["limit"]
			}
			q.Del("limit")
			r = r.Clone(r.Context())
			r.URL.RawQuery = q.Encode()
		}
		rw := &restRefusal{ResponseWriter: w, trace: trace}
		next.ServeHTTP(rw, r)
		rw.finish()
	})
}

// restTrace is what restRequest learns of a request's way through the
// transcoder, to tell the request's faults from the server's.
type restTrace struct {
	transport atomic.Bool // reading the client's body failed
	answered  atomic.Bool // a handler began its answer
}

type restTraceKey struct{}

// tracedBody notes in failed any error but io.EOF that reading it returns.
type tracedBody struct {
	io.ReadCloser
	failed *atomic.Bool
}

func (b *tracedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.failed.Store(true)
	}
	return n, err
}

// restReached wraps the handlers the transcoder calls, so restRefusal knows
// whether an answer is a handler's or the transcoder's own.
func restReached(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if trace, ok := r.Context().Value(restTraceKey{}).(*restTrace); ok {
			w = &answerWriter{ResponseWriter: w, answered: &trace.answered}
		}
		h.ServeHTTP(w, r)
	})
}

// answerWriter notes in answered that the handler began its answer.
type answerWriter struct {
	http.ResponseWriter
	answered *atomic.Bool
}

func (w *answerWriter) WriteHeader(code int) {
	w.answered.Store(true)
	w.ResponseWriter.WriteHeader(code)
}

func (w *answerWriter) Write(b []byte) (int, error) {
	w.answered.Store(true)
	return w.ResponseWriter.Write(b)
}

func (w *answerWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *answerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// restRefusal turns a server error the transcoder answers itself, for a
// request it could not map onto the method's message (a query parameter
// naming no field, invalid UTF-8, a body that does not fit the message once
// query parameters are merged in), into what it is, the request's fault:
// 400 invalid_argument. A handler's answer, and an error while reading the
// client's body, are left alone.
type restRefusal struct {
	http.ResponseWriter
	trace   *restTrace
	refused bool
	body    bytes.Buffer
}

func (w *restRefusal) WriteHeader(code int) {
	if code >= http.StatusInternalServerError && !w.refused && !w.trace.transport.Load() && !w.trace.answered.Load() {
		w.refused = true
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *restRefusal) Write(b []byte) (int, error) {
	if w.refused {
		return w.body.Write(b)
	}
	return w.ResponseWriter.Write(b)
}

func (w *restRefusal) Flush() {
	if !w.refused {
		_ = http.NewResponseController(w.ResponseWriter).Flush()
	}
}

func (w *restRefusal) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish writes the refusal, keeping the transcoder's message.
func (w *restRefusal) finish() {
	if !w.refused {
		return
	}
	var status struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(w.body.Bytes(), &status)
	writeRESTError(w.ResponseWriter, status.Message)
}

// writeRESTError writes a 400 invalid_argument answer as the transcoder
// writes errors.
func writeRESTError(w http.ResponseWriter, msg string) {
	body, _ := json.Marshal(map[string]any{"code": int(connect.CodeInvalidArgument), "message": msg, "details": []any{}})
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write(body)
}

func restUTF8(path string, q url.Values) bool {
	if !utf8.ValidString(path) {
		return false
	}
	for k, vs := range q {
		if !utf8.ValidString(k) {
			return false
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return false
			}
		}
	}
	return true
}
