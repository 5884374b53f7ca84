package rpc

import "net/http"

// restPrefix is where the REST paths of the google.api.http annotations live.
const restPrefix = "/api/v1/"

// restRequest prepares a REST request for the transcoder. It caps the body,
// because the transcoder buffers it whole before the handler's own limit can
// refuse it. It lets callers write ?limit=N for page_size, the name the seed's
// REST paths used; the transcoder otherwise takes only field names, and an
// explicit page_size wins.
func restRequest(next http.Handler, maxBytes int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if maxBytes > 0 {
			r.Body = http.MaxBytesReader(w, r.Body, maxBytes)
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
