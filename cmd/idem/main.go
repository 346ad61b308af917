package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// commands lists every command, in the order `idem help` shows them. A group of
// subcommands (`idem dedup prune`, `idem dedup stats`) is a slice whose names share
// their first word; a new group is a new file declaring its slice plus one line here.
var commands = slices.Concat(
	migrateCommands,
	dlqCommands,
	dedupCommands,
	serveCommands,
	versionCommands,
)

// run runs the command line args and returns the process's exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr, getenv: os.Getenv, connectTimeout: defaultConnectTimeout}
	if f, ok := stdout.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			c.terminal = true
		}
	}
	return c.run(ctx, args)
}

func (c *cli) run(ctx context.Context, args []string) int {
	return c.exit(c.dispatch(ctx, args))
}

// dispatch finds the command args name and runs it.
func (c *cli) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		c.usage(c.stderr)
		return &exitError{code: exitUsage}
	}
	switch {
	case args[0] == "help":
		return c.help(args[1:])
	case isHelpFlag(args[0]):
		c.usage(c.stdout)
		return nil
	case strings.HasPrefix(args[0], "-"):
		return usageErrorf("", "flag %s must come after a command: idem <command> [flags]", args[0])
	}
	if cmd := findCommand(args[0]); cmd != nil {
		return c.runCommand(ctx, cmd, args[1:])
	}
	group := groupCommands(args[0])
	if len(group) == 0 {
		return usageErrorf("", "unknown command %q", args[0])
	}
	if len(args) == 1 {
		c.groupUsage(c.stderr, args[0], group)
		return &exitError{code: exitUsage}
	}
	if isHelpFlag(args[1]) {
		c.groupUsage(c.stdout, args[0], group)
		return nil
	}
	cmd := findCommand(args[0] + " " + args[1])
	if cmd == nil {
		return usageErrorf(args[0], "unknown command %q", args[0]+" "+args[1])
	}
	return c.runCommand(ctx, cmd, args[2:])
}

// help is `idem help [command]`.
func (c *cli) help(args []string) error {
	name := strings.Join(args, " ")
	if name == "" {
		c.usage(c.stdout)
		return nil
	}
	if cmd := findCommand(name); cmd != nil {
		c.commandUsage(c.stdout, cmd)
		return nil
	}
	if group := groupCommands(name); len(group) > 0 {
		c.groupUsage(c.stdout, name, group)
		return nil
	}
	return usageErrorf("", "unknown command %q", name)
}

func findCommand(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

func groupCommands(group string) []*command {
	var out []*command
	for _, cmd := range commands {
		if strings.HasPrefix(cmd.name, group+" ") {
			out = append(out, cmd)
		}
	}
	return out
}

func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "-help", "--help":
		return true
	}
	return false
}

var versionCommands = []*command{{
	name:    "version",
	summary: "print the version of idem",
	help:    "Version prints the version of the idem module this command was built from, or devel.",
	noStore: true,
	setup: func(*flag.FlagSet) action {
		return func(_ context.Context, e *env) error {
			fmt.Fprintln(e.stdout, "idem", version())
			return nil
		}
	},
}}

// version is the module version of the build, as `go install …@v1.2.3` records it.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" || bi.Main.Version == "(devel)" {
		return "devel"
	}
	return bi.Main.Version
}
