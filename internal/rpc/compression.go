package rpc

import (
	"compress/flate"
	"compress/gzip"
	"errors"
	"io"
	"math"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// gzipName is gzip's name in Connect, gRPC, gRPC-Web and HTTP's
// Content-Encoding.
const gzipName = "gzip"

// inflation makes the gzip decompressors of every protocol: each produces at
// most limit+1 bytes of a message and then fails with resource_exhausted.
// Connect and vanguard otherwise read a decompressor to its end, even past
// their own limit (connect does, to tell the client the size), so a 15 MB
// body of zeros was inflated to 15 GiB before it was refused. The byte over
// the limit lets connect's own check see that the message is too large.
type inflation struct {
	limit    int64 // 0: none
	inflated prometheus.Counter
}

func newInflation(limit int64, reg prometheus.Registerer) *inflation {
	in := &inflation{
		limit: limit,
		inflated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_request_inflated_bytes_total",
			Help: "Bytes produced by decompressing request messages, refused ones included.",
		}),
	}
	reg.MustRegister(in.inflated)
	return in
}

// handlerOption replaces connect's gzip.
func (in *inflation) handlerOption() connect.HandlerOption {
	return connect.WithCompression(gzipName, in.newDecompressor, newGzipWriter)
}

// gunzipBody inflates a gzip REST body as it is read. The transcoder would
// inflate it without bound, and its gzip also inflates the handlers'
// answers, which this limit is not for.
func (in *inflation) gunzipBody(body io.ReadCloser) io.ReadCloser {
	return &gunzipBody{body: body, d: in.newDecompressor()}
}

func (in *inflation) newDecompressor() connect.Decompressor {
	return &limitedGunzip{in: in}
}

func newGzipWriter() connect.Compressor { return gzip.NewWriter(io.Discard) }

// limitedGunzip is one pooled decompressor of an inflation.
type limitedGunzip struct {
	gz   gzip.Reader
	in   *inflation
	left int64 // bytes it may still produce for this message
}

func (d *limitedGunzip) Read(p []byte) (int, error) {
	if d.in.limit > 0 {
		if d.left <= 0 {
			return 0, inflatesTooLargeError(d.in.limit)
		}
		if int64(len(p)) > d.left {
			p = p[:d.left]
		}
	}
	n, err := d.gz.Read(p)
	d.left -= int64(n)
	if n > 0 {
		d.in.inflated.Add(float64(n))
	}
	return n, err
}

func (d *limitedGunzip) Reset(r io.Reader) error {
	d.left = d.in.limit
	if d.left < math.MaxInt64 {
		d.left++
	}
	return d.gz.Reset(r)
}

func (d *limitedGunzip) Close() error { return d.gz.Close() }

// gunzipBody reads the gzip header on its first Read, so a bad one is an
// error of the body, answered like any other.
type gunzipBody struct {
	body    io.ReadCloser
	d       connect.Decompressor
	started bool
	err     error
}

func (g *gunzipBody) Read(p []byte) (int, error) {
	if !g.started {
		g.started = true
		g.err = badGzip(g.d.Reset(g.body))
	}
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.d.Read(p)
	return n, badGzip(err)
}

// badGzip makes malformed gzip invalid_argument, as connect's own
// decompression does; the body's own errors (too large, too slow) pass.
func badGzip(err error) error {
	var corrupt flate.CorruptInputError
	if errors.As(err, &corrupt) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum) {
		return badGzipError(err)
	}
	return err
}

func (g *gunzipBody) Close() error { return g.body.Close() }
