package migrations_test

import (
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"

	"github.com/idemkit/idem/internal/migrations"
)

func TestLoad(t *testing.T) {
	t.Parallel()
	files, err := migrations.Load(fstest.MapFS{
		"002_more.up.sql":    {Data: []byte("B")},
		"001_first.up.sql":   {Data: []byte("A")},
		"001_first.down.sql": {Data: []byte("undo")},
	})
	require.NoError(t, err)
	require.Equal(t, []migrations.File{{Version: 1, Name: "first", Up: "A"}, {Version: 2, Name: "more", Up: "B"}}, files)

	_, err = migrations.Load(fstest.MapFS{"001_a.up.sql": {}, "003_c.up.sql": {}})
	require.ErrorContains(t, err, "out of sequence")
	_, err = migrations.Load(fstest.MapFS{"001_a.up.sql": {}, "001_b.up.sql": {}})
	require.ErrorContains(t, err, "out of sequence")
	_, err = migrations.Load(fstest.MapFS{"first.up.sql": {}})
	require.ErrorContains(t, err, "no version number")
}
