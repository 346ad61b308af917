package dlq_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/dlq"
)

func TestHasEventID(t *testing.T) {
	t.Parallel()
	require.True(t, (&dlq.DeadLetter{EventID: "evt-1"}).HasEventID())
	require.True(t, (&dlq.DeadLetter{EventID: "underived:x"}).HasEventID())
	require.False(t, (&dlq.DeadLetter{EventID: "derived:9f86d081884c7d65"}).HasEventID())
}

func TestStatusValid(t *testing.T) {
	t.Parallel()
	for _, s := range []dlq.Status{dlq.StatusPending, dlq.StatusReplayed, dlq.StatusDiscarded, dlq.StatusResolved} {
		require.True(t, s.Valid(), s)
	}
	for _, s := range []dlq.Status{"", "all", "Pending"} {
		require.False(t, s.Valid(), s)
	}
}

func TestFilterValidate(t *testing.T) {
	t.Parallel()
	now := time.Now()
	require.NoError(t, dlq.Filter{}.Validate())
	require.NoError(t, dlq.Filter{Status: dlq.StatusPending, Since: now.Add(-time.Hour), Until: now, Limit: 10, AfterID: 3}.Validate())
	for _, tt := range []struct {
		f    dlq.Filter
		want string
	}{
		{dlq.Filter{Status: "open"}, `dlq: Filter.Status "open" is not a status`},
		{dlq.Filter{Since: now, Until: now}, "dlq: Filter.Since"},
		{dlq.Filter{Limit: -1}, "dlq: Filter.Limit must not be negative, got -1"},
		{dlq.Filter{AfterID: -1}, "dlq: Filter.AfterID must not be negative, got -1"},
	} {
		require.ErrorContains(t, tt.f.Validate(), tt.want)
	}
	require.NoError(t, dlq.AuditFilter{Action: dlq.ActionDiscard}.Validate())
	require.ErrorContains(t, dlq.AuditFilter{Action: "delete"}.Validate(), `dlq: AuditFilter.Action "delete" is not an action`)
	require.ErrorContains(t, dlq.AuditFilter{Limit: -2}.Validate(), "dlq: AuditFilter.Limit")
}

func TestChangeValidate(t *testing.T) {
	t.Parallel()
	ids := []int64{1}
	require.NoError(t, dlq.Change{IDs: ids}.Validate(dlq.ActionReplay))
	require.NoError(t, dlq.Change{IDs: ids}.Validate(dlq.ActionResolve))
	require.NoError(t, dlq.Change{IDs: ids, Reason: "test traffic"}.Validate(dlq.ActionDiscard))
	require.ErrorIs(t, dlq.Change{IDs: ids}.Validate(dlq.ActionDiscard), dlq.ErrReasonRequired)
	require.ErrorIs(t, dlq.Change{IDs: ids, Reason: " \t"}.Validate(dlq.ActionDiscard), dlq.ErrReasonRequired)
	require.ErrorContains(t, dlq.Change{}.Validate(dlq.ActionResolve), "dlq: Change.IDs is empty")
	require.ErrorContains(t, dlq.Change{IDs: ids}.Validate("delete"), `dlq: unknown action "delete"`)
}
