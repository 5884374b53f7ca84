package auth

import (
	"errors"
	"testing"

	"github.com/google/uuid"
)

func TestUserOnly(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		p    Principal
		want error
	}{
		{Principal{ID: uuid.New(), Kind: KindUser}, nil},
		{Principal{ID: uuid.New(), Kind: KindAgent}, ErrPermissionDenied},
		{Principal{Kind: KindUser}, ErrUnauthenticated},
		{Principal{}, ErrUnauthenticated},
	} {
		if err := UserOnly(c.p); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("UserOnly(%+v) = %v, want %v", c.p, err, c.want)
		}
	}
}
