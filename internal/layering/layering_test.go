// Package layering checks the dependency direction of DESIGN §3: the core packages
// import no database driver, and the leaf packages import nothing of idem's.
package layering

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/idemkit/idem"

func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...).CombinedOutput()
	require.NoError(t, err, "go list: %s", out)
	return strings.Fields(string(out))
}

func TestCoreImportsNoDatabaseDriver(t *testing.T) {
	t.Parallel()
	core := []string{module + "/consumer", module + "/middleware", module + "/retry", module + "/dedup", module + "/dlq"}
	for _, dep := range deps(t, core...) {
		for _, driver := range []string{"github.com/jackc/pgx", "modernc.org/sqlite", "github.com/lib/pq", "github.com/mattn/go-sqlite3", module + "/postgres", module + "/sqlite"} {
			require.False(t, strings.HasPrefix(dep, driver), "a core package depends on %s", dep)
		}
	}
}

func TestLeavesImportNothingOfOurs(t *testing.T) {
	t.Parallel()
	for _, leaf := range []string{"retry", "dedup", "dlq"} {
		for _, dep := range deps(t, module+"/"+leaf) {
			if strings.HasPrefix(dep, module+"/") {
				require.Equal(t, module+"/"+leaf, dep, "%s imports %s", leaf, dep)
			}
		}
	}
}

func TestRetryImportsOnlyTheStandardLibrary(t *testing.T) {
	t.Parallel()
	for _, dep := range deps(t, module+"/retry") {
		first := strings.SplitN(dep, "/", 2)[0]
		require.True(t, dep == module+"/retry" || !strings.Contains(first, "."), "retry depends on %s", dep)
	}
}

// TestCoreImportsNoOpenTelemetrySDK: the core packages use the OpenTelemetry API only;
// the SDK and exporters are for tests and examples (DESIGN §5, STYLE §2.15).
func TestCoreImportsNoOpenTelemetrySDK(t *testing.T) {
	t.Parallel()
	core := []string{module + "/consumer", module + "/middleware", module + "/retry", module + "/dedup", module + "/dlq"}
	for _, dep := range deps(t, core...) {
		for _, sdk := range []string{"go.opentelemetry.io/otel/sdk", "go.opentelemetry.io/otel/exporters"} {
			require.False(t, strings.HasPrefix(dep, sdk), "a core package depends on %s", dep)
		}
	}
}
