package postgres

import (
	"fmt"
	"regexp"
)

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// ValidateIdentifier checks a schema or table name taken from configuration: lower-case
// letters, digits and underscores, not starting with a digit, at most 63 bytes (the
// PostgreSQL limit, beyond which names are silently cut). field names the setting in
// the error.
func ValidateIdentifier(field, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("postgres: %s is empty", field)
	case len(name) > 63:
		return fmt.Errorf("postgres: %s is %d bytes long; PostgreSQL identifiers are at most 63 bytes", field, len(name))
	case !identRE.MatchString(name):
		return fmt.Errorf("postgres: %s %q is not a plain identifier: use lower-case letters, digits and underscores, not starting with a digit", field, name)
	}
	return nil
}
