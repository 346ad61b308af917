package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// serverTimeout bounds starting or stopping a private server.
const serverTimeout = 90 * time.Second

// ErrMissingProgram reports a server program that is not installed.
var ErrMissingProgram = errors.New("soak: program not installed")

// server is a server process of the harness's own (PostgreSQL, RabbitMQ, NATS, Redis)
// on a free loopback port, with its data under the harness's data directory, so that
// the chaos loop can stop and start it without touching the machine's shared servers.
// It runs in a process group of its own.
type server struct {
	name string
	path string
	args []string
	env  []string
	port int
	addr string
	cred *syscall.Credential // run as this user (PostgreSQL refuses root)
	log  io.Writer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// findProgram returns the first of preferred that exists, or name on PATH or in
// /usr/sbin, /usr/bin, /usr/local/bin; otherwise an error wrapping ErrMissingProgram.
func findProgram(name string, preferred ...string) (string, error) {
	for _, p := range preferred {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrMissingProgram, name)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// freePort returns a loopback TCP port nothing listens on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func newServer(name, path string, port int, args, env []string, log io.Writer) *server {
	return &server{name: name, path: path, args: args, env: env, port: port,
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: log}
}

// start starts the server and waits until it accepts TCP connections.
func (s *server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("soak: %s is running already", s.name)
	}
	cmd := exec.Command(s.path, s.args...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("soak: start %s: %w", s.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	deadline := time.NewTimer(serverTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("soak: %s exited at start: %s", s.name, cmd.ProcessState)
		case <-deadline.C:
			return fmt.Errorf("soak: %s does not accept connections on %s after %s", s.name, s.addr, serverTimeout)
		case <-ctx.Done():
			return ctx.Err()
		case <-poll.C:
		}
	}
}

// stop sends sig to the server and waits until it exited; after serverTimeout it kills
// its process group.
func (s *server) stop(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(serverTimeout):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		s.cmd = nil
		return fmt.Errorf("soak: %s did not exit within %s of %s; killed", s.name, serverTimeout, sig)
	}
	s.cmd = nil
	return nil
}

// close stops the server for good: SIGTERM, then SIGKILL to its process group.
func (s *server) close() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// postgresBinaries returns the directory of the newest installed PostgreSQL's
// programs (initdb, postgres).
func postgresBinaries() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if fileExists(filepath.Join(dirs[i], "initdb")) {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("%w: initdb and postgres (PostgreSQL server)", ErrMissingProgram)
}

// newPostgres initialises a PostgreSQL cluster under dir and returns its server, not
// started. As root it runs as the postgres user, since PostgreSQL refuses root.
func newPostgres(ctx context.Context, dir string, log io.Writer) (*server, error) {
	bin, err := postgresBinaries()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "pgdata")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("soak: PostgreSQL refuses to run as root, and there is no postgres user to run it as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		for _, p := range []string{dir, data} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, err
			}
		}
		// Every directory above must be traversable by that user.
		for p := filepath.Dir(dir); p != "/" && p != "."; p = filepath.Dir(p) {
			if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o001 == 0 {
				_ = os.Chmod(p, st.Mode().Perm()|0o111)
			}
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("soak: initdb: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := newServer("postgres", filepath.Join(bin, "postgres"), port, []string{
		"-D", data, "-p", strconv.Itoa(port), "-k", data,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300",
		"-c", "shared_buffers=128MB",
		"-c", "fsync=on", "-c", "synchronous_commit=on",
		"-c", "log_min_messages=warning", "-c", "log_min_error_statement=panic",
	}, nil, log)
	s.cred = cred
	return s, nil
}

// newRabbitMQ returns a RabbitMQ node of the harness's own under dir, with an Erlang
// port mapper of its own (started here), and its configuration, data and cookie under
// dir: nothing of the machine's node is used. The node is not started.
func newRabbitMQ(ctx context.Context, dir string, log io.Writer) (node, epmd *server, err error) {
	script, err := findProgram("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
	if err != nil {
		return nil, nil, err
	}
	epmdPath, err := findProgram("epmd")
	if err != nil {
		return nil, nil, err
	}
	epmdPort, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	epmd = newServer("epmd", epmdPath, epmdPort, []string{"-port", strconv.Itoa(epmdPort), "-address", "127.0.0.1"}, nil, log)
	if err := epmd.start(ctx); err != nil {
		return nil, nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	dist, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	files := map[string]string{
		"rabbitmq-env.conf": "",
		"rabbitmq.conf":     "log.console = true\nlog.console.level = warning\n",
		"enabled_plugins":   "[].\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "home"), 0o700); err != nil {
		return nil, nil, err
	}
	node = newServer("rabbitmq", script, port, nil, []string{
		"HOME=" + filepath.Join(dir, "home"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT=" + strconv.Itoa(epmdPort),
		"RABBITMQ_NODENAME=idem_soak_" + strconv.Itoa(port) + "@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(port),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(dist),
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
		"RABBITMQ_LOGS=-",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
	}, log)
	return node, epmd, nil
}

// newNATS returns a NATS server with JetStream on file storage under dir, not started.
func newNATS(dir string, log io.Writer) (*server, error) {
	path, err := findProgram("nats-server")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return newServer("nats-server", path, port, []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir}, nil, log), nil
}

// newRedis returns a Redis server whose append-only file, fsynced at every write, is
// under dir; not started.
func newRedis(dir string, log io.Writer) (*server, error) {
	path, err := findProgram("redis-server")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return newServer("redis-server", path, port, []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", ""}, nil, log), nil
}

// serverVersion runs path with args and returns the first line it prints.
func serverVersion(path string, args ...string) string {
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown"
	}
	for i, b := range out {
		if b == '\n' {
			return string(out[:i])
		}
	}
	return string(out)
}
