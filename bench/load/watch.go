package load

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// WatchOptions describe a fan-out run: Streams idle WatchMessages streams on
// WatchURL, spread evenly over the spec's conversations, while turns are
// saved through SaveURL (another replica) at Rate turns per second.
type WatchOptions struct {
	WatchURL string
	SaveURL  string
	Streams  int
	// StreamsPerConn caps the streams sharing one HTTP/2 connection (Go's
	// server allows 250 at once by default).
	StreamsPerConn int
	Rate           float64
	Duration       time.Duration
	// Settle is how long deliveries may still arrive after the last save.
	Settle time.Duration
	RunID  string
	// Opened, if set, is called once every stream is open.
	Opened func()
}

type delivery struct {
	seq int64
	at  time.Time
}

type watchStream struct {
	target   int
	after    int64
	got      []delivery
	last     int64
	dups     int64
	disorder int64
	err      error
}

type savedKey struct {
	target int
	seq    int64
}

// RunWatch opens the streams (gRPC over h2c), waits until every one is
// open, saves turns at the given rate, and measures for every saved message
// and every stream watching its conversation the delay from SaveTurn's
// answer to the stream's delivery. A delivery that arrives before the
// answer counts as zero delay (and as early).
func RunWatch(ctx context.Context, spec Spec, opts WatchOptions) (Result, error) {
	if opts.StreamsPerConn <= 0 {
		opts.StreamsPerConn = 200
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var clients []parleyv1connect.ConversationServiceClient
	for i := 0; i < opts.Streams; i += opts.StreamsPerConn {
		clients = append(clients, parleyv1connect.NewConversationServiceClient(
			&http.Client{Transport: H2CTransport()}, opts.WatchURL, connect.WithGRPC(), noGzip))
	}
	streams := make([]*watchStream, opts.Streams)
	var (
		opened  sync.WaitGroup
		running sync.WaitGroup
		openErr atomic.Int64
		errs    errorLog
		errMu   sync.Mutex
	)
	sem := make(chan struct{}, 64) // streams being opened at once
	openStart := time.Now()
	for i := range streams {
		ti := i % len(spec.Targets)
		s := &watchStream{target: ti, after: spec.Targets[ti].LastSeq, last: spec.Targets[ti].LastSeq}
		streams[i] = s
		opened.Add(1)
		running.Add(1)
		sem <- struct{}{}
		go func() {
			defer running.Done()
			req := connect.NewRequest(&parleyv1.WatchMessagesRequest{ConversationId: spec.Targets[ti].ConversationID, AfterSeq: s.after})
			req.Header().Set("Authorization", "Bearer "+spec.Targets[ti].Token)
			stream, err := clients[i/opts.StreamsPerConn].WatchMessages(ctx, req)
			if err == nil {
				// Blocks until the server has sent its headers, which it
				// does once the watch is registered.
				_ = stream.ResponseHeader()
			}
			<-sem
			opened.Done()
			if err != nil {
				openErr.Add(1)
				s.err = err
				return
			}
			defer stream.Close()
			for stream.Receive() {
				m := stream.Msg().GetMessage()
				if m == nil {
					continue // heartbeat
				}
				now := time.Now()
				switch seq := m.GetSeq(); {
				case seq <= s.last:
					s.dups++
				case seq != s.last+1:
					s.disorder++
					s.last = seq
				default:
					s.last = seq
				}
				s.got = append(s.got, delivery{seq: m.GetSeq(), at: now})
			}
			if err := stream.Err(); err != nil && ctx.Err() == nil {
				s.err = err
			}
		}()
	}
	opened.Wait()
	openTime := time.Since(openStart)
	if n := openErr.Load(); n > 0 {
		cancel()
		running.Wait()
		for _, s := range streams {
			if s.err != nil {
				errs.add(s.err)
			}
		}
		return Result{Mode: "watch", Streams: opts.Streams, Errors: errs.count, ErrorSamples: errs.samples},
			fmt.Errorf("%d of %d streams failed to open", n, opts.Streams)
	}
	if opts.Opened != nil {
		opts.Opened()
	}

	// The writer: a ticker feeding workers, so a slow answer does not hold
	// back the schedule; a tick finding every worker busy and the queue full
	// is skipped (and counted as an error).
	saver := parleyv1connect.NewConversationServiceClient(&http.Client{Transport: H2CTransport()}, opts.SaveURL, connect.WithGRPC(), noGzip)
	var (
		savedMu   sync.Mutex
		saved     = make(map[savedKey]time.Time)
		saveLat   []time.Duration
		saveCount atomic.Int64
	)
	work := make(chan int, 64)
	var workers sync.WaitGroup
	for w := 0; w < 32; w++ {
		workers.Go(func() {
			for ti := range work {
				t := spec.Targets[ti]
				n := saveCount.Add(1)
				req := connect.NewRequest(&parleyv1.SaveTurnRequest{
					ConversationId:   t.ConversationID,
					TurnId:           opts.RunID + "-" + strconv.FormatInt(n, 10),
					UserMessage:      spec.UserMessage,
					AssistantMessage: spec.AssistantMessage,
				})
				req.Header().Set("Authorization", "Bearer "+t.Token)
				t0 := time.Now()
				resp, err := saver.SaveTurn(ctx, req)
				answered := time.Now()
				savedMu.Lock()
				if err != nil {
					errMu.Lock()
					errs.add(fmt.Errorf("save turn: %w", err))
					errMu.Unlock()
				} else {
					saveLat = append(saveLat, answered.Sub(t0))
					for _, m := range resp.Msg.GetMessages() {
						saved[savedKey{ti, m.GetSeq()}] = answered
					}
				}
				savedMu.Unlock()
			}
		})
	}
	interval := time.Duration(float64(time.Second) / opts.Rate)
	tick := time.NewTicker(interval)
	stop := time.After(opts.Duration)
	next := 0
	var skipped int64
loop:
	for {
		select {
		case <-tick.C:
			select {
			case work <- next % len(spec.Targets):
				next++
			default:
				skipped++
			}
		case <-stop:
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	tick.Stop()
	close(work)
	workers.Wait()
	time.Sleep(opts.Settle)
	cancel()
	running.Wait()

	res := Result{
		Mode: "watch", Streams: opts.Streams, OpenSeconds: openTime.Seconds(),
		Seconds: opts.Duration.Seconds(), Saves: int64(len(saveLat)),
	}
	res.SaveLatency = Summarize(saveLat)
	if skipped > 0 {
		errs.add(fmt.Errorf("writer fell behind: %d ticks skipped", skipped))
	}
	// Which seqs each conversation got from the writer.
	perTarget := make(map[int][]int64)
	for k := range saved {
		perTarget[k.target] = append(perTarget[k.target], k.seq)
	}
	var delays []time.Duration
	for _, s := range streams {
		if s.err != nil {
			errs.add(s.err)
		}
		res.Duplicates += s.dups
		res.OutOfOrder += s.disorder
		at := make(map[int64]time.Time, len(s.got))
		for _, d := range s.got {
			at[d.seq] = d.at
		}
		for _, seq := range perTarget[s.target] {
			recv, ok := at[seq]
			if !ok {
				res.Missing++
				continue
			}
			d := recv.Sub(saved[savedKey{s.target, seq}])
			if d < 0 {
				res.EarlyDelivered++
				d = 0
			}
			delays = append(delays, d)
		}
	}
	res.Deliveries = int64(len(delays))
	res.Latency = Summarize(delays)
	res.Requests = res.Deliveries
	res.RPS = float64(res.Deliveries) / opts.Duration.Seconds()
	res.Errors = errs.count + res.Missing + res.Duplicates + res.OutOfOrder
	res.ErrorSamples = errs.samples
	return res, nil
}
