package rpc

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/conversation"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// WatchMessages streams the stored messages after after_seq, then each new
// one, until the client leaves, the conversation is deleted (not_found), the
// caller's token expires (unauthenticated) or the server drains
// (unavailable).
//
// A stream's goroutine lives as long as the stream and is parked nearly all
// that time, and Go keeps a goroutine's stack at the largest size it ever
// needed until a garbage collection finds three quarters of it unused. So
// the handler's goroutine only waits: everything that calls deep (the
// access check and reads in PostgreSQL, revocation checks in Valkey,
// encoding and sending) runs on a short-lived goroutine per wake-up
// (offStack). An idle stream then holds an 8 KiB stack instead of 16 KiB.
func (s *ConversationServer) WatchMessages(ctx context.Context, req *connect.Request[parleyv1.WatchMessagesRequest], stream *connect.ServerStream[parleyv1.WatchMessagesResponse]) error {
	var ws *watchStream
	err := offStack(func() (err error) {
		ws, err = s.openWatch(ctx, req, stream)
		return err
	})
	if err != nil {
		return err
	}
	defer ws.w.Close()
	return ws.run(ctx)
}

// watchStream is one WatchMessages stream between wake-ups.
type watchStream struct {
	s      *ConversationServer
	p      auth.Principal
	w      *conversation.Watch
	stream *connect.ServerStream[parleyv1.WatchMessagesResponse]
	// heartbeatAt is when the stream gets a heartbeat unless a message goes
	// out first; recheckAt is when the token's revocation is checked next.
	heartbeatAt, recheckAt time.Time
}

// openWatch checks access, starts the watch and sends the response headers.
func (s *ConversationServer) openWatch(ctx context.Context, req *connect.Request[parleyv1.WatchMessagesRequest], stream *connect.ServerStream[parleyv1.WatchMessagesResponse]) (*watchStream, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	id, err := parseUUID("conversation_id", req.Msg.GetConversationId())
	if err != nil {
		return nil, err
	}
	w, err := s.svc.WatchMessages(ctx, p, id, req.Msg.GetAfterSeq())
	if err != nil {
		return nil, toConnectError(ctx, s.log, err)
	}
	// Send the headers now: clients (and proxies) see the stream open even
	// when nothing is stored yet and the first heartbeat is far off.
	if err := stream.Send(nil); err != nil {
		w.Close()
		return nil, err
	}
	now := time.Now()
	return &watchStream{
		s: s, p: p, w: w, stream: stream,
		heartbeatAt: now.Add(s.watch.Heartbeat),
		recheckAt:   now.Add(s.watch.Heartbeat),
	}, nil
}

// run wakes the stream whenever the hub rings or something falls due, until
// the stream has to end. One timer serves heartbeats, revocation checks and
// the token's expiry.
func (ws *watchStream) run(ctx context.Context) error {
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
		case <-ws.s.watch.Drain:
			return connect.NewError(connect.CodeUnavailable, errors.New("server is draining; reconnect"))
		case <-ctx.Done():
			return toConnectError(ctx, ws.s.log, ctx.Err())
		}
	}
}

// due is when the stream has to wake even if the hub does not ring.
func (ws *watchStream) due() time.Time {
	t := ws.heartbeatAt
	if ws.s.watch.Revoked != nil && ws.recheckAt.Before(t) {
		t = ws.recheckAt
	}
	if exp := ws.p.ExpiresAt; !exp.IsZero() && exp.Before(t) {
		t = exp
	}
	return t
}

// step ends the stream if its token expired or was revoked, sends every
// message the watch has, and a heartbeat if the stream has been idle for a
// heartbeat interval.
func (ws *watchStream) step(ctx context.Context) error {
	for sent := false; ; sent = true {
		// A busy stream does not wait between sends: the checks that fall
		// due come first on every round.
		now := time.Now()
		if err := ws.checkToken(ctx, now); err != nil {
			return err
		}
		msgs, err := ws.w.Next(ctx)
		if err != nil {
			return toConnectError(ctx, ws.s.log, err)
		}
		if len(msgs) == 0 {
			if !sent && now.Before(ws.heartbeatAt) {
				return nil
			}
			if !sent {
				if err := ws.stream.Send(&parleyv1.WatchMessagesResponse{Heartbeat: timestamppb.New(now)}); err != nil {
					return err
				}
			}
			ws.heartbeatAt = now.Add(ws.s.watch.Heartbeat)
			return nil
		}
		for _, m := range msgs {
			if err := ws.stream.Send(&parleyv1.WatchMessagesResponse{Message: messageToProto(m)}); err != nil {
				return err
			}
		}
	}
}

// checkToken ends a stream whose token expired, or was revoked after the
// stream opened. When revocation cannot be checked, the stream,
// authenticated at its start, goes on until the next check.
func (ws *watchStream) checkToken(ctx context.Context, now time.Time) error {
	if exp := ws.p.ExpiresAt; !exp.IsZero() && !now.Before(exp) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("access token expired"))
	}
	if ws.s.watch.Revoked == nil || now.Before(ws.recheckAt) {
		return nil
	}
	ws.recheckAt = now.Add(ws.s.watch.Heartbeat)
	revoked, err := ws.s.watch.Revoked(ctx, ws.p)
	if err != nil {
		if ctx.Err() == nil {
			ws.s.revocationFailed.Failed(ctx, err)
		}
		return nil
	}
	if revoked {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("access token revoked"))
	}
	return nil
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
