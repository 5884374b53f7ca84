package rpc

import (
	"errors"
	"testing"
)

func TestOffStack(t *testing.T) {
	want := errors.New("from f")
	if err := offStack(func() error { return want }); err != want {
		t.Errorf("offStack returned %v, want f's error", err)
	}
	ran := false
	if err := offStack(func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("offStack = %v, ran %v", err, ran)
	}
	defer func() {
		if r := recover(); r != "boom" {
			t.Errorf("recovered %v, want f's panic raised in the caller", r)
		}
	}()
	_ = offStack(func() error { panic("boom") })
	t.Error("offStack returned after f panicked")
}

// BenchmarkOffStack is what every WatchMessages wake-up pays to keep the
// stream's own stack shallow.
func BenchmarkOffStack(b *testing.B) {
	f := func() error { return nil }
	for b.Loop() {
		_ = offStack(f)
	}
}
