package postgres_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
)

// lineFixture is an endpoint whose first event's delivery is parked and
// whose later events' deliveries are pending behind it.
type lineFixture struct {
	db     *bun.DB
	store  *postgres.WebhookStore
	user   uuid.UUID
	ep     webhook.Endpoint
	now    time.Time
	parked uuid.UUID   // the event whose delivery is parked
	events []uuid.UUID // the events published after it, in order
}

func newLineFixture(t *testing.T, pending int) *lineFixture {
	t.Helper()
	db := testenv.DB(t)
	f := &lineFixture{db: db, store: postgres.NewWebhookStore(db), user: roomSeedUser(t, postgres.NewAccountStore(db), "alice"),
		now: time.Now().UTC().Truncate(time.Microsecond)}
	var err error
	f.ep, err = f.store.CreateEndpoint(t.Context(), webhook.Endpoint{
		ID: uuid.New(), UserID: f.user, URL: "https://127.0.0.1:9/hooks", EventTypes: []string{webhook.CallEnded}, CreatedAt: f.now,
	}, webhook.NewSecret(), 10)
	if err != nil {
		t.Fatal(err)
	}
	f.parked = f.publish(t)
	if err := f.store.FinishDelivery(t.Context(), f.claim(t), webhook.Outcome{Park: true, Status: 500, Error: "down", At: f.now}); err != nil {
		t.Fatal(err)
	}
	for range pending {
		f.events = append(f.events, f.publish(t))
	}
	return f
}

func (f *lineFixture) publish(t *testing.T) uuid.UUID {
	t.Helper()
	ev, err := webhook.NewEvent(f.user, webhook.CallEnded, json.RawMessage(`{}`), f.now)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.store.Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID
}

func (f *lineFixture) claim(t *testing.T) webhook.Delivery {
	t.Helper()
	ds, err := f.store.ClaimDeliveries(t.Context(), f.now, 10, time.Minute)
	if err != nil || len(ds) != 1 {
		t.Fatalf("claim = %v, %v; want one delivery", ds, err)
	}
	return ds[0]
}

// hold begins a transaction and returns it with its backend's pid.
func (f *lineFixture) hold(t *testing.T) (*sql.Tx, int) {
	t.Helper()
	tx, err := f.db.DB.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	var pid int
	if err := tx.QueryRowContext(t.Context(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return tx, pid
}

// waitBlockedBy returns once some backend waits for a lock pid holds, or
// once finished reports true.
func (f *lineFixture) waitBlockedBy(t *testing.T, pid int, finished func() bool) {
	t.Helper()
	for waiting := false; !waiting && !finished(); time.Sleep(5 * time.Millisecond) {
		if err := f.db.DB.QueryRowContext(t.Context(), `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
		   WHERE $1::int = ANY (pg_blocking_pids(pid)))`, pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
	}
}

// A redelivery that runs while a claim is leasing the head of the
// endpoint's line (the claim's transaction not yet committed) still sees
// that lease: the redelivered delivery, now ahead in the line, is due only
// once the lease ends, so the endpoint never has two deliveries in flight.
func TestRedeliveryDuringAClaimWaitsForItsLease(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		redeliver func(ctx context.Context, f *lineFixture) (int, error)
	}{
		{"event", func(ctx context.Context, f *lineFixture) (int, error) {
			return f.store.Redeliver(ctx, f.user, f.parked, f.now)
		}},
		{"parked", func(ctx context.Context, f *lineFixture) (int, error) {
			return f.store.RedeliverParked(ctx, f.user, f.ep.ID, f.now)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newLineFixture(t, 1)

			// A claim leases the head and has not committed yet.
			claim, claimPID := f.hold(t)
			rows, err := claim.QueryContext(t.Context(), postgres.ClaimWebhookDeliveriesSQL, 10, f.now, 60.0)
			if err != nil {
				t.Fatal(err)
			}
			claimed := 0
			for rows.Next() {
				claimed++
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			rows.Close()
			if claimed != 1 {
				t.Fatalf("the held claim leased %d deliveries, want the head", claimed)
			}

			var n int
			done := make(chan error, 1)
			go func() {
				var err error
				n, err = tc.redeliver(context.WithoutCancel(t.Context()), f)
				done <- err
			}()
			// Commit the claim once the redelivery has finished or waits
			// on it, whichever it does.
			var redeliverErr error
			finished := false
			f.waitBlockedBy(t, claimPID, func() bool {
				select {
				case redeliverErr = <-done:
					finished = true
				default:
				}
				return finished
			})
			if err := claim.Commit(); err != nil {
				t.Fatal(err)
			}
			if !finished {
				redeliverErr = <-done
			}
			if redeliverErr != nil || n != 1 {
				t.Fatalf("redeliver = %d, %v; want 1", n, redeliverErr)
			}

			// While the head's lease holds, nothing more is claimed...
			if ds, err := f.store.ClaimDeliveries(t.Context(), f.now.Add(time.Second), 10, time.Minute); err != nil || len(ds) != 0 {
				var took []uuid.UUID
				for _, d := range ds {
					took = append(took, d.Event.ID)
				}
				t.Fatalf("while %s is in flight a claim took the deliveries of %v, %v; want nothing", f.events[0], took, err)
			}
			// ...and the redelivered one is due when it ends.
			st, err := f.store.Deliveries(t.Context(), f.user, f.parked)
			if err != nil || len(st) != 1 {
				t.Fatalf("deliveries = %v, %v", st, err)
			}
			if want := f.now.Add(time.Minute); st[0].State != webhook.DeliveryPending || st[0].NextAttemptAt.Before(want) {
				t.Fatalf("redelivered: state %v, due %v; want pending, due at %v or later", st[0].State, st[0].NextAttemptAt, want)
			}
		})
	}
}

// A redelivery of an endpoint's parked deliveries that meets a finish
// disabling the endpoint (which holds its leased delivery, then disables
// the endpoint and parks its pending deliveries, as finishDisabling does)
// waits for it and then refuses, rather than the two waiting on each other.
func TestRedeliverParkedWaitsForADisablingFinish(t *testing.T) {
	t.Parallel()
	f := newLineFixture(t, 2)
	held := f.claim(t)

	fin, finPID := f.hold(t)
	if _, err := fin.ExecContext(t.Context(), `SELECT 1 FROM webhook_deliveries WHERE id = $1 FOR UPDATE`, held.ID); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.store.RedeliverParked(context.WithoutCancel(t.Context()), f.user, f.ep.ID, f.now)
		done <- err
	}()
	f.waitBlockedBy(t, finPID, func() bool { return false })
	for _, q := range []string{
		`UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = 'gone' WHERE id = $1`,
		`UPDATE webhook_deliveries SET state = 3, locked_until = NULL, finished_at = now() WHERE endpoint_id = $1 AND state = 1`,
	} {
		if _, err := fin.ExecContext(t.Context(), q, f.ep.ID); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := fin.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, webhook.ErrEndpointDisabled) {
		t.Fatalf("RedeliverParked = %v, want %v", err, webhook.ErrEndpointDisabled)
	}
}
