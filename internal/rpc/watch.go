package rpc

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// WatchMessages streams the stored messages after after_seq, then each new
// one, until the client leaves or the watch ends: the conversation is
// deleted (not_found), the caller's token expires or is revoked
// (unauthenticated) or the server drains (unavailable). conversation.Watch
// decides when; this is the transport: the goroutine the stream lives on,
// heartbeats on the wire and the mapping of errors.
//
// A stream's goroutine lives as long as the stream and is parked nearly all
// that time, and Go keeps a goroutine's stack at the largest size it ever
// needed until a garbage collection finds three quarters of it unused. So
// the handler's goroutine only waits: everything that calls deep (the
// access check and reads in PostgreSQL, revocation checks in Valkey,
// encoding and sending) runs on a short-lived goroutine per wake-up
// (offStack). An idle stream then holds an 8 KiB stack instead of 16 KiB.
func (s *ConversationServer) WatchMessages(ctx context.Context, req *connect.Request[parleyv1.WatchMessagesRequest], stream *connect.ServerStream[parleyv1.WatchMessagesResponse]) error {
	open := func(p auth.Principal, id uuid.UUID) (watcher[conversation.Message], error) {
		return s.svc.WatchMessages(ctx, p, id, req.Msg.GetAfterSeq())
	}
	return serveWatch(ctx, s, req.Msg.GetConversationId(), open, stream, watchResponses[conversation.Message, parleyv1.WatchMessagesResponse]{
		entry: func(m conversation.Message) (*parleyv1.WatchMessagesResponse, error) {
			return &parleyv1.WatchMessagesResponse{Message: messageToProto(m)}, nil
		},
		heartbeat: func(t *timestamppb.Timestamp) *parleyv1.WatchMessagesResponse {
			return &parleyv1.WatchMessagesResponse{Heartbeat: t}
		},
	})
}

// watcher is the domain's watch of one kind of entry
// (conversation.Watch, conversation.ItemWatch).
type watcher[T any] interface {
	Next(ctx context.Context) ([]T, error)
	Ready() <-chan struct{}
	Due() time.Time
	Close()
}

// watchResponses makes a watch stream's responses: one per entry, and
// heartbeats.
type watchResponses[T, R any] struct {
	entry     func(T) (*R, error)
	heartbeat func(*timestamppb.Timestamp) *R
}

// serveWatch serves one watch stream: open starts the watch for the
// caller, after its conversation id is parsed.
func serveWatch[T, R any](ctx context.Context, s *ConversationServer, conversationID string, open func(auth.Principal, uuid.UUID) (watcher[T], error), stream *connect.ServerStream[R], resp watchResponses[T, R]) error {
	var ws *watchStream[T, R]
	err := offStack(func() (err error) {
		ws, err = openWatch(ctx, s, conversationID, open, stream, resp)
		return err
	})
	if err != nil {
		return err
	}
	defer ws.w.Close()
	return ws.run(ctx)
}

// watchStream is one watch stream between wake-ups.
type watchStream[T, R any] struct {
	s      *ConversationServer
	w      watcher[T]
	stream *connect.ServerStream[R]
	resp   watchResponses[T, R]
	// heartbeatAt is when the stream gets a heartbeat unless a message goes
	// out first.
	heartbeatAt time.Time
}

// openWatch checks access, starts the watch and sends the response headers.
func openWatch[T, R any](ctx context.Context, s *ConversationServer, conversationID string, open func(auth.Principal, uuid.UUID) (watcher[T], error), stream *connect.ServerStream[R], resp watchResponses[T, R]) (*watchStream[T, R], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", conversationID)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	w, err := open(p, id)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	// Send the headers now: clients (and proxies) see the stream open even
	// when nothing is stored yet and the first heartbeat is far off.
	if err := stream.Send(nil); err != nil {
		w.Close()
		return nil, err
	}
	return &watchStream[T, R]{s: s, w: w, stream: stream, resp: resp, heartbeatAt: time.Now().Add(s.watch.Heartbeat)}, nil
}

// run wakes the stream whenever the watch is ready or something falls due,
// until the stream has to end. One timer serves heartbeats and the watch's
// own deadlines.
func (ws *watchStream[T, R]) run(ctx context.Context) error {
	timer := time.NewTimer(ws.s.watch.Heartbeat)
	defer timer.Stop()
	step := func() error { return ws.step(ctx) }
	for {
		if err := offStack(step); err != nil {
			return err
		}
		timer.Reset(time.Until(ws.due()))
		select {
		case <-ws.w.Ready():
		case <-timer.C:
		case <-ctx.Done():
			return toConnectError(ctx, ws.s.log, ctx.Err())
		}
	}
}

// due is when the stream has to wake even if the watch is not ready.
func (ws *watchStream[T, R]) due() time.Time {
	t := ws.heartbeatAt
	if d := ws.w.Due(); !d.IsZero() && d.Before(t) {
		t = d
	}
	return t
}

// step sends every message the watch has, and a heartbeat if the stream has
// been idle for a heartbeat interval.
func (ws *watchStream[T, R]) step(ctx context.Context) error {
	for sent := false; ; sent = true {
		now := time.Now()
		msgs, err := ws.w.Next(ctx)
		if err != nil {
			return toConnectError(ctx, ws.s.log, err)
		}
		if len(msgs) == 0 {
			if !sent && now.Before(ws.heartbeatAt) {
				return nil
			}
			if !sent {
				if err := ws.stream.Send(ws.resp.heartbeat(timestamppb.New(now))); err != nil {
					return err
				}
			}
			ws.heartbeatAt = now.Add(ws.s.watch.Heartbeat)
			return nil
		}
		for _, m := range msgs {
			r, err := ws.resp.entry(m)
			if err != nil {
				return toConnectError(ctx, ws.s.log, err)
			}
			if err := ws.stream.Send(r); err != nil {
				return err
			}
		}
	}
}

// offStack runs f on a goroutine of its own and waits for it, so that the
// stack f needs is released when f returns instead of staying with the
// calling goroutine. A panic in f is raised again in the caller, where the
// handler's recovery sees it.
func offStack(f func() error) error {
	type outcome struct {
		err      error
		returned bool
		panicked any
	}
	done := make(chan outcome, 1)
	go func() {
		var o outcome
		defer func() {
			if !o.returned {
				o.panicked = recover()
			}
			done <- o
		}()
		o.err = f()
		o.returned = true
	}()
	o := <-done
	if !o.returned {
		panic(o.panicked)
	}
	return o.err
}
