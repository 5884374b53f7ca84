package postgres_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestIsUnavailable(t *testing.T) {
	t.Parallel()
	pgErr := func(code string) error { return fmt.Errorf("select: %w", &pgconn.PgError{Code: code}) }
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"other", errors.New("boom"), false},
		{"unique violation", pgErr("23505"), false},
		{"syntax error", pgErr("42601"), false},
		{"connection failure", pgErr("08006"), true},
		{"connection does not exist", pgErr("08003"), true},
		{"admin shutdown", pgErr("57P01"), true},
		{"crash shutdown", pgErr("57P02"), true},
		{"starting up", pgErr("57P03"), true},
		{"too many connections", pgErr("53300"), true},
		{"refused dial", fmt.Errorf("query: %w", refused), true},
		{"bad conn", fmt.Errorf("begin: %w", driver.ErrBadConn), true},
		{"closed conn", fmt.Errorf("exec: %w", pgconn.ErrConnClosed), true},
		{"lost mid-message", fmt.Errorf("receive: %w", io.ErrUnexpectedEOF), true},
		{"caller's deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), false},
		{"caller's cancellation", fmt.Errorf("query: %w", context.Canceled), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := postgres.IsUnavailable(tt.err); got != tt.want {
				t.Errorf("isUnavailable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestEveryStoreMethodReportsAnOutage calls every exported method of every
// store, found by reflection, after the server has gone away, and expects
// ErrUnavailable: a method added without markUnavailable fails here. The first call meets the pool's
// broken connection, the later ones a refused dial.
func TestEveryStoreMethodReportsAnOutage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pg := testenv.StartPostgres(t, testenv.PostgresOptions{})
	db, err := postgres.Open(ctx, pg.CreateDatabase(t, "outage"), postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	pg.Stop()

	stores := []any{postgres.NewAccountStore(db), postgres.NewConversationStore(db), postgres.NewFileStore(db), postgres.NewRoomStore(db)}
	ctxType, errType := reflect.TypeFor[context.Context](), reflect.TypeFor[error]()
	var calls int
	for _, store := range stores {
		v := reflect.ValueOf(store)
		for i := range v.NumMethod() {
			name := fmt.Sprintf("%T.%s", store, v.Type().Method(i).Name)
			m := v.Method(i)
			mt := m.Type()
			if mt.NumIn() == 0 || mt.In(0) != ctxType || mt.NumOut() == 0 || mt.Out(mt.NumOut()-1) != errType {
				continue
			}
			args := []reflect.Value{reflect.ValueOf(ctx)}
			for j := 1; j < mt.NumIn(); j++ {
				// A slice of one, so that no method returns early with
				// nothing to do.
				if in := mt.In(j); in.Kind() == reflect.Slice && in.Elem().Kind() != reflect.Uint8 {
					args = append(args, reflect.MakeSlice(in, 1, 1))
				} else {
					args = append(args, reflect.Zero(in))
				}
			}
			out := m.Call(args)
			calls++
			err, _ := out[len(out)-1].Interface().(error)
			if !errors.Is(err, postgres.ErrUnavailable) {
				t.Errorf("%s: %v, want ErrUnavailable", name, err)
			}
		}
	}
	// Every store method takes a context and returns an error; too few
	// calls would mean the reflection found nothing.
	if calls < 40 {
		t.Errorf("only %d store methods called: the walk found too little", calls)
	}
}
