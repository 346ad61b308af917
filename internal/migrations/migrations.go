// Package migrations reads the numbered schema migrations the stores embed:
// NNN_name.up.sql and NNN_name.down.sql.
package migrations

import (
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
)

// File is one up migration.
type File struct {
	Version int
	Name    string
	Up      string
}

// Load reads the up migrations of fsys, in version order. Versions must run 1, 2, 3,
// … without a gap or a repeat: a migration numbered below one a database already has
// would never be applied there.
func Load(fsys fs.FS) ([]File, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var out []File
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".up.sql")
		if !ok {
			continue
		}
		num, rest, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("migration %s has no version number", e.Name())
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		out = append(out, File{Version: v, Name: rest, Up: string(body)})
	}
	slices.SortFunc(out, func(a, b File) int { return a.Version - b.Version })
	for i, f := range out {
		if f.Version != i+1 {
			return nil, fmt.Errorf("migration %03d_%s is out of sequence: versions must run 1, 2, 3, … and this one should be %d", f.Version, f.Name, i+1)
		}
	}
	return out, nil
}
