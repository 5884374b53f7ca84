package valkeypubsub

import (
	"testing"

	"github.com/google/uuid"
)

func TestCodec(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	for _, seq := range []int64{-1, 0, 1, 1 << 40} {
		gotID, gotSeq, ok := decode(encode(id, seq))
		if !ok || gotID != id || gotSeq != seq {
			t.Errorf("round trip of %d = %v %d %v", seq, gotID, gotSeq, ok)
		}
	}
	for _, bad := range []string{"", "x", id.String(), id.String() + " x", "nope 5"} {
		if _, _, ok := decode(bad); ok {
			t.Errorf("decode(%q) accepted", bad)
		}
	}
}
