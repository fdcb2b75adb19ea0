package h2relay

import (
	"errors"
	"testing"
	"time"
)

// The rapid-reset budget is spent by work, not time: a client whose resets
// keep the relay busy (it never waits for the client) is cut off after
// resetBurst+resetDebt resets however slowly the relay handles them — here
// 2 ms per reset, as a relay starved of CPU would, during which a budget
// refilled by the second would have regained 4 tokens a reset. Time the
// connection spent waiting for its client does refill it.
func TestResetBudgetIsSpentByWorkNotTime(t *testing.T) {
	c := &conn{server: true, idleClock: true, resetTokens: resetBurst}
	fl := &flusher{}
	n := 0
	var err error
	for n < 10*(resetBurst+resetDebt) {
		time.Sleep(2 * time.Millisecond) // a starved relay, busy with this client
		n++
		if err = c.chargeReset(fl); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrTooManyResets) || n != resetBurst+resetDebt+1 {
		t.Fatalf("cut off after %d resets (%v), want after %d", n, err, resetBurst+resetDebt+1)
	}

	// Waiting for the client refills: resetRate a second of waiting.
	c = &conn{server: true, idleClock: true, resetTokens: 0}
	c.idleFor = 100 * time.Millisecond
	for i := range 200 {
		if err := c.chargeReset(fl); err != nil || c.throttled != 0 {
			t.Fatalf("reset %d after 100 ms of waiting: %v, throttled %d; want 200 free", i, err, c.throttled)
		}
	}
	if err := c.chargeReset(fl); err != nil || c.throttled != 1 {
		t.Fatalf("the 201st reset: %v, throttled %d; want the first throttled", err, c.throttled)
	}
}
