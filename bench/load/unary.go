package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// The RPCs and protocols RunUnary drives.
const (
	RPCSaveTurn     = "SaveTurn"
	RPCListMessages = "ListMessages"

	ProtocolConnectJSON = "connect-json-http1"
	ProtocolGRPC        = "grpc-h2c"
	// ProtocolREST is the seed's REST paths (proto JSON bodies) on HTTP/1.1.
	ProtocolREST = "rest-json-http1"
)

// PageSize is the ListMessages page the benchmark asks for.
const PageSize = 50

// UnaryOptions describe a closed-loop run of one unary RPC.
type UnaryOptions struct {
	BaseURL  string // http://host:port of a Parley replica
	RPC      string // RPCSaveTurn or RPCListMessages
	Protocol string // ProtocolConnectJSON or ProtocolGRPC
	Clients  int
	Warmup   time.Duration
	Duration time.Duration
	// RunID prefixes SaveTurn's turn ids, which must be unique across runs.
	RunID string
	Seed  uint64
}

// caller makes one request; each client owns one, with its own connection.
type caller interface {
	call(ctx context.Context, t *Target, n int64) error
	close()
}

// RunUnary runs opts.Clients clients, each sending its next request as soon
// as the previous one is answered, for opts.Warmup (not measured) then
// opts.Duration. Every request started in the measured window counts, with
// its exact latency; every error of the whole run counts.
func RunUnary(ctx context.Context, spec Spec, opts UnaryOptions) (Result, error) {
	if opts.RPC != RPCSaveTurn && opts.RPC != RPCListMessages {
		return Result{}, fmt.Errorf("unknown rpc %q", opts.RPC)
	}
	callers := make([]caller, opts.Clients)
	for i := range callers {
		c, err := newCaller(spec, opts, i)
		if err != nil {
			return Result{}, err
		}
		callers[i] = c
	}
	defer func() {
		for _, c := range callers {
			c.close()
		}
	}()

	start := time.Now()
	from := start.Add(opts.Warmup)
	end := from.Add(opts.Duration)
	type clientResult struct {
		samples []time.Duration
		errs    errorLog
	}
	results := make([]clientResult, opts.Clients)
	var cpuAtFrom atomic.Int64
	cpuTimer := time.AfterFunc(opts.Warmup, func() { cpuAtFrom.Store(int64(cpuTime())) })
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			r := &results[i]
			r.samples = make([]time.Duration, 0, 1<<15)
			rng := rand.New(rand.NewPCG(opts.Seed, uint64(i)))
			for n := int64(0); ctx.Err() == nil; n++ {
				t := &spec.Targets[rng.IntN(len(spec.Targets))]
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				err := callers[i].call(ctx, t, n)
				if err != nil {
					r.errs.add(err)
					continue
				}
				if !t0.Before(from) {
					r.samples = append(r.samples, time.Since(t0))
				}
			}
		})
	}
	wg.Wait()
	cpuTimer.Stop()
	clientCPU := cpuTime() - time.Duration(cpuAtFrom.Load())

	var (
		all  []time.Duration
		errs errorLog
	)
	for i := range results {
		all = append(all, results[i].samples...)
		errs.merge(&results[i].errs)
	}
	res := Result{
		Mode: "unary", RPC: opts.RPC, Protocol: opts.Protocol, Clients: opts.Clients,
		Seconds:  opts.Duration.Seconds(),
		Requests: int64(len(all)),
		RPS:      float64(len(all)) / opts.Duration.Seconds(),
		Errors:   errs.count, ErrorSamples: errs.samples,
		ClientCPUSeconds: clientCPU.Seconds(),
	}
	res.Latency = Summarize(all)
	return res, ctx.Err()
}

func newCaller(spec Spec, opts UnaryOptions, client int) (caller, error) {
	turnPrefix := opts.RunID + "-" + strconv.Itoa(client) + "-"
	switch opts.Protocol {
	case ProtocolConnectJSON, ProtocolREST:
		u, err := url.Parse(opts.BaseURL)
		if err != nil {
			return nil, err
		}
		userJSON, _ := json.Marshal(spec.UserMessage)
		assistantJSON, _ := json.Marshal(spec.AssistantMessage)
		return &connectCaller{
			addr: u.Host, rpc: opts.RPC, rest: opts.Protocol == ProtocolREST, turnPrefix: turnPrefix,
			userJSON: userJSON, assistantJSON: assistantJSON,
		}, nil
	case ProtocolGRPC:
		return &grpcCaller{
			client: parleyv1connect.NewConversationServiceClient(&http.Client{Transport: H2CTransport()}, opts.BaseURL,
				connect.WithGRPC(), noGzip),
			rpc: opts.RPC, turnPrefix: turnPrefix, spec: spec,
		}, nil
	}
	return nil, fmt.Errorf("unknown protocol %q", opts.Protocol)
}

// noGzip stops connect-go's client from asking for gzip-compressed answers,
// which it does by default and the server then honours on every answer:
// grpc-go and most gRPC clients do not, and compressing a 20 KB page costs
// more CPU than producing it.
var noGzip = connect.WithAcceptCompression("gzip", nil, nil)

// H2CTransport returns a transport speaking HTTP/2 without TLS (prior
// knowledge), as gRPC clients do behind a TLS-terminating proxy. Each
// transport keeps its own connections.
func H2CTransport() *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{Protocols: &p, MaxIdleConnsPerHost: 4}
}

// connectCaller speaks Connect's unary JSON protocol (or the seed's REST
// paths, whose bodies are the same proto JSON) on one HTTP/1.1 keep-alive
// connection, writing requests by hand and checking answers
// without decoding them in full: a protojson client would spend more CPU
// than the server, on the same two cores.
type connectCaller struct {
	addr          string
	rpc           string
	rest          bool
	turnPrefix    string
	userJSON      []byte
	assistantJSON []byte

	conn net.Conn
	br   *bufio.Reader
	req  []byte
	body []byte
	resp bytes.Buffer
}

var (
	seqField      = []byte(`"seq":`)
	replayedTrue  = []byte(`"replayed":true`)
	listPath      = parleyv1connect.ConversationServiceListMessagesProcedure
	saveTurnPath  = parleyv1connect.ConversationServiceSaveTurnProcedure
	errWrongCount = errors.New("wrong number of messages in the answer")
)

func (c *connectCaller) call(ctx context.Context, t *Target, n int64) error {
	if c.conn == nil {
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return err
		}
		c.conn = conn
		c.br = bufio.NewReaderSize(conn, 32<<10)
	}
	method, path, want := "POST ", listPath, PageSize
	b := c.body[:0]
	if c.rest && c.rpc == RPCListMessages {
		// GET /api/v1/conversations/{id}/messages?limit=N has no body.
		method, path = "GET ", "/api/v1/conversations/"+t.ConversationID+"/messages?limit="+strconv.Itoa(PageSize)
	} else {
		b = append(b, `{"conversationId":"`...)
		b = append(b, t.ConversationID...)
	}
	switch {
	case c.rpc == RPCSaveTurn:
		path, want = saveTurnPath, 2
		if c.rest {
			path = "/api/v1/conversations/save-turn"
		}
		b = append(b, `","turnId":"`...)
		b = append(b, c.turnPrefix...)
		b = strconv.AppendInt(b, n, 10)
		b = append(b, `","userMessage":`...)
		b = append(b, c.userJSON...)
		b = append(b, `,"assistantMessage":`...)
		b = append(b, c.assistantJSON...)
		b = append(b, '}')
	case !c.rest:
		b = append(b, `","pageSize":`...)
		b = strconv.AppendInt(b, PageSize, 10)
		b = append(b, '}')
	}
	c.body = b
	r := c.req[:0]
	r = append(r, method...)
	r = append(r, path...)
	r = append(r, " HTTP/1.1\r\nHost: "...)
	r = append(r, c.addr...)
	if c.rest {
		r = append(r, "\r\nContent-Type: application/json\r\nAuthorization: Bearer "...)
	} else {
		r = append(r, "\r\nContent-Type: application/json\r\nConnect-Protocol-Version: 1\r\nAuthorization: Bearer "...)
	}
	r = append(r, t.Token...)
	r = append(r, "\r\nContent-Length: "...)
	r = strconv.AppendInt(r, int64(len(b)), 10)
	r = append(r, "\r\n\r\n"...)
	r = append(r, b...)
	c.req = r
	if _, err := c.conn.Write(r); err != nil {
		c.close()
		return err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.close()
		return err
	}
	c.resp.Reset()
	_, err = c.resp.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return err
	}
	if resp.Close {
		c.close()
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %.200s", c.rpc, resp.StatusCode, c.resp.Bytes())
	}
	got := c.resp.Bytes()
	if bytes.Count(got, seqField) != want || (c.rpc == RPCSaveTurn && bytes.Contains(got, replayedTrue)) {
		return fmt.Errorf("%s: %w: %.200s", c.rpc, errWrongCount, got)
	}
	return nil
}

func (c *connectCaller) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// grpcCaller uses connect-go's gRPC client (binary protobuf over h2c) on a
// transport of its own.
type grpcCaller struct {
	client     parleyv1connect.ConversationServiceClient
	rpc        string
	turnPrefix string
	spec       Spec
}

func (c *grpcCaller) call(ctx context.Context, t *Target, n int64) error {
	if c.rpc == RPCSaveTurn {
		req := connect.NewRequest(&parleyv1.SaveTurnRequest{
			ConversationId:   t.ConversationID,
			TurnId:           c.turnPrefix + strconv.FormatInt(n, 10),
			UserMessage:      c.spec.UserMessage,
			AssistantMessage: c.spec.AssistantMessage,
		})
		req.Header().Set("Authorization", "Bearer "+t.Token)
		resp, err := c.client.SaveTurn(ctx, req)
		if err != nil {
			return err
		}
		if len(resp.Msg.GetMessages()) != 2 || resp.Msg.GetReplayed() {
			return fmt.Errorf("%s: %w", c.rpc, errWrongCount)
		}
		return nil
	}
	req := connect.NewRequest(&parleyv1.ListMessagesRequest{ConversationId: t.ConversationID, PageSize: PageSize})
	req.Header().Set("Authorization", "Bearer "+t.Token)
	resp, err := c.client.ListMessages(ctx, req)
	if err != nil {
		return err
	}
	if len(resp.Msg.GetMessages()) != PageSize {
		return fmt.Errorf("%s: %w (%d)", c.rpc, errWrongCount, len(resp.Msg.GetMessages()))
	}
	return nil
}

func (c *grpcCaller) close() {}
