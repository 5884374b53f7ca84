package conversation

import (
	"fmt"
	"slices"
	"testing"
)

func TestMergeBatchesCutAtTheBoundsAndRepeatedIDs(t *testing.T) {
	item := func(id string, size int) Item {
		return Item{ID: id, Payload: make([]byte, size)}
	}
	var many []Item
	for i := range MaxItemsPerBatch + 1 {
		many = append(many, item(fmt.Sprint(i), 1))
	}
	big := MaxBatchBytes / 3
	for name, c := range map[string]struct {
		items []Item
		sizes []int
	}{
		"count":       {many, []int{MaxItemsPerBatch, 1}},
		"bytes":       {[]Item{item("a", big), item("b", big), item("c", big), item("d", big)}, []int{3, 1}},
		"repeated id": {[]Item{item("a", 1), item("b", 1), item("a", 1), item("c", 1)}, []int{2, 2}},
		"none":        {nil, nil},
	} {
		var sizes []int
		for _, b := range mergeBatches(c.items) {
			sizes = append(sizes, len(b))
		}
		if !slices.Equal(sizes, c.sizes) {
			t.Errorf("%s: batches of %v, want %v", name, sizes, c.sizes)
		}
	}
}
