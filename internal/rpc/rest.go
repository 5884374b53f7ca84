package rpc

import (
	"net/http"
	"strings"
)

// restPrefix is where the REST paths of the google.api.http annotations live.
const restPrefix = "/api/v1/"

// restRequest prepares a REST request for the transcoder. It caps the body,
// and what a gzip body inflates to, because the transcoder buffers it whole
// before the handler's own limit can refuse it. It lets callers write
// ?limit=N for page_size, the name the seed's REST paths used; the
// transcoder otherwise takes only field names, and an explicit page_size
// wins.
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
		q := r.URL.Query()
		if q.Has("limit") && !q.Has("page_size") && !q.Has("pageSize") {
			q["page_size"] = q["limit"]
			q.Del("limit")
			r = r.Clone(r.Context())
			r.URL.RawQuery = q.Encode()
		}
		next.ServeHTTP(w, r)
	})
}
