package room

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/auth"
)

const (
	// MaxAggregateRange bounds AggregateCalls' created range, which it
	// requires: a quarter's calls at most.
	MaxAggregateRange = 93 * 24 * time.Hour
	// MaxAggregateGroups bounds the groups one AggregateCalls answers.
	MaxAggregateGroups = 1000
	// backfillBatch is how many call ids BackfillMetrics reads per page.
	backfillBatch = 100
)

// TimeBucket is the span AggregateCalls groups calls' creation times by.
type TimeBucket int16

const (
	// NoBucket: one group over the whole range.
	NoBucket TimeBucket = 0
	// BucketHour: by the hour of the time zone.
	BucketHour TimeBucket = 1
	// BucketDay: by the day of the time zone, midnight to midnight.
	BucketDay TimeBucket = 2
)

// CallGrouping says how AggregateCalls groups calls.
type CallGrouping struct {
	// ByAgent groups by the agent the call dispatched.
	ByAgent bool
	Bucket  TimeBucket
	// TimeZone is the IANA time zone whose hours and days buckets are;
	// "" is UTC.
	TimeZone string
	// DefaultAgent is the agent of rooms naming none (the service sets
	// it).
	DefaultAgent string
}

// CallGroup is one group of AggregateCalls: the calls of one agent (when
// grouped by agent) created in one bucket (when bucketed).
type CallGroup struct {
	// AgentName is "" unless grouped by agent.
	AgentName string
	// Start is the bucket's start; zero unless bucketed.
	Start time.Time
	// Calls counts the group's calls; Reported those with a report.
	Calls, Reported int64
	// Turns and Interruptions are summed over the reports.
	Turns, Interruptions int64
	// Latencies summarise every sample of the group's reports, by metric:
	// nearest-rank percentiles over the samples, not over calls.
	Latencies []LatencyStats
	// Usage sums the reports' usage per type, provider and model, field
	// by field.
	Usage []ModelUsage
}

// metricsOf derives the metrics of a stored report; nil if it yields none
// (ReportSession refuses such reports, so only a report stored by some
// other rule could).
func metricsOf(raw []byte) *CallMetrics {
	r, err := ParseReport(raw)
	if err != nil {
		return nil
	}
	m, err := DeriveMetrics(r)
	if err != nil {
		return nil
	}
	return &m
}

// BackfillMetrics stores the metrics of every report stored without them:
// those stored before metrics were, and those an older replica stores
// during a rolling update. It is a job the wiring runs at start-up and then
// every minute. It pages call ids and fills each call's metrics in a
// transaction of its own, so it holds one report at a time, and replicas
// running it at once split the calls: FillMetrics passes over one another
// holds, and stores only over a report that has none.
func (s *Service) BackfillMetrics(ctx context.Context) {
	var n int
	for after := uuid.Nil; ; {
		due, err := s.store.DueMetrics(ctx, after, backfillBatch)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("backfill call metrics", slog.String("error", err.Error()))
			}
			return
		}
		for _, id := range due {
			filled, err := s.store.FillMetrics(ctx, id, metricsOf)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("backfill call metrics", slog.String("call_id", id.String()), slog.String("error", err.Error()))
				}
				return
			}
			if filled {
				n++
			}
		}
		if len(due) < backfillBatch {
			break
		}
		after = due[len(due)-1]
	}
	if n > 0 {
		s.log.Info("backfilled call metrics", slog.Int("calls", n))
	}
}

// AggregateCalls sums up the calls p may read (as ListCalls: a user its
// own, an agent everyone's) that match f, in the groups g makes. f's
// created range is required and at most MaxAggregateRange; at most
// MaxAggregateGroups groups are answered.
func (s *Service) AggregateCalls(ctx context.Context, p auth.Principal, f CallFilter, g CallGrouping) ([]CallGroup, error) {
	owner, err := callReader(p)
	if err != nil {
		return nil, err
	}
	if err := checkAggregate(f, &g); err != nil {
		return nil, err
	}
	f.DefaultAgent = f.AgentName != "" && f.AgentName == s.agentName
	g.DefaultAgent = s.agentName
	groups, err := s.store.AggregateCalls(ctx, owner, f, g, MaxAggregateGroups+1)
	if err != nil {
		return nil, err
	}
	if len(groups) > MaxAggregateGroups {
		return nil, invalid(fmt.Sprintf("the calls make more than %d groups: narrow the filter or the range, or group by less", MaxAggregateGroups))
	}
	return groups, nil
}

// checkAggregate checks AggregateCalls' filter and grouping, and puts
// UTC for a zone not given.
func checkAggregate(f CallFilter, g *CallGrouping) error {
	if f.CreatedAfter.IsZero() || f.CreatedBefore.IsZero() {
		return invalid("created_after and created_before are both required")
	}
	span := f.CreatedBefore.Sub(f.CreatedAfter)
	switch {
	case span <= 0:
		return invalid("created_after must be before created_before")
	case span > MaxAggregateRange:
		return invalid(fmt.Sprintf("created_after to created_before spans %s, more than the %d days allowed", span, MaxAggregateRange/(24*time.Hour)))
	}
	switch f.Status {
	case 0, CallPending, CallLive, CallEnded:
	default:
		return invalid("unknown call status")
	}
	switch g.Bucket {
	case NoBucket, BucketDay:
	case BucketHour:
		// Each hour of the range (and one more for a range not on the
		// hour) is a group at least.
		if hours := int((span + time.Hour - 1) / time.Hour); hours+1 > MaxAggregateGroups {
			return invalid(fmt.Sprintf("hour buckets over %s make more than %d groups: narrow the range or bucket by day", span, MaxAggregateGroups))
		}
	default:
		return invalid("unknown time bucket")
	}
	if g.TimeZone == "" {
		g.TimeZone = "UTC"
	}
	// "Local" is the server's zone, which a client cannot know.
	if _, err := time.LoadLocation(g.TimeZone); err != nil || g.TimeZone == "Local" {
		return invalid(fmt.Sprintf("time_zone %q is not an IANA time zone name", g.TimeZone))
	}
	return nil
}
