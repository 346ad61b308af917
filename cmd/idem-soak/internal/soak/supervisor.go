package soak

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one run of a consumer process.
type proc struct {
	cmd     *exec.Cmd
	started time.Time
	ready   chan struct{} // closed when it printed "ready"
	first   chan struct{} // closed when its first delivery had an outcome
	exited  chan struct{} // closed when it exited
	// firstAt is when first closed.
	firstAt time.Time
	// stopping is set before the harness signals it: its exit is no surprise.
	stopping bool
	lastErr  string
}

// slot is one of a leg's consumer replicas: a process the supervisor keeps running,
// restarting it when it exits by itself (a crash-poison event calls os.Exit), while
// the chaos loop kills, stops and restarts it on purpose.
type slot struct {
	sup      *supervisor
	instance int

	mu   sync.Mutex
	proc *proc
	down bool // held down by the chaos loop or the end of the leg
}

// supervisor runs a leg's consumer processes.
type supervisor struct {
	exe     string
	cfg     ConsumerConfig
	logDir  string
	slots   []*slot
	onExit  func(instance int, code int, lastErr string) // an exit nobody asked for
	stopped chan struct{}
	once    sync.Once

	mu      sync.Mutex
	started int
}

func newSupervisor(exe string, cfg ConsumerConfig, replicas int, logDir string, onExit func(int, int, string)) *supervisor {
	s := &supervisor{exe: exe, cfg: cfg, logDir: logDir, onExit: onExit, stopped: make(chan struct{})}
	for i := range replicas {
		s.slots = append(s.slots, &slot{sup: s, instance: i})
	}
	return s
}

// starts returns how many processes were started.
func (s *supervisor) starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// launch starts slot sl's process; it does not wait for it to be ready.
func (sl *slot) launch() (*proc, error) {
	s := sl.sup
	cfg := s.cfg
	cfg.Instance = sl.instance
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.exe)
	cmd.Env = append(os.Environ(), consumerEnv+"="+string(raw))
	logFile, err := os.OpenFile(filepath.Join(s.logDir, fmt.Sprintf("consumer-%d.log", sl.instance)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		_ = logFile.Close()
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	s.mu.Lock()
	s.started++
	s.mu.Unlock()
	p := &proc{cmd: cmd, started: time.Now(), ready: make(chan struct{}), first: make(chan struct{}), exited: make(chan struct{})}
	fmt.Fprintf(logFile, "--- pid %d started %s\n", cmd.Process.Pid, p.started.Format(time.RFC3339Nano))
	go func() {
		sc := bufio.NewScanner(stdout)
		var readyOnce, firstOnce sync.Once
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ready":
				readyOnce.Do(func() { close(p.ready) })
			case line == "first":
				firstOnce.Do(func() {
					sl.mu.Lock()
					p.firstAt = time.Now()
					sl.mu.Unlock()
					close(p.first)
				})
			case strings.HasPrefix(line, "error:"):
				sl.mu.Lock()
				p.lastErr = line
				sl.mu.Unlock()
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		err := cmd.Wait()
		_ = logFile.Close()
		code := cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = -int(ws.Signal())
		}
		_ = err
		close(p.exited)
		sl.exited(p, code)
	}()
	return p, nil
}

// exited handles the end of p: an exit nobody asked for is reported and the process
// started again, after a short pause when it failed at once.
func (sl *slot) exited(p *proc, code int) {
	sl.mu.Lock()
	surprise := !p.stopping
	lastErr := p.lastErr
	restart := surprise && !sl.down && sl.proc == p
	if sl.proc == p {
		sl.proc = nil
	}
	sl.mu.Unlock()
	if !surprise {
		return
	}
	sl.sup.onExit(sl.instance, code, lastErr)
	if !restart {
		return
	}
	if code != crashExitCode || time.Since(p.started) < 500*time.Millisecond {
		select {
		case <-time.After(300 * time.Millisecond):
		case <-sl.sup.stopped:
			return
		}
	}
	_, _ = sl.up()
}

// up starts the slot's process unless one runs; it returns the running process.
func (sl *slot) up() (*proc, error) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	select {
	case <-sl.sup.stopped:
		return nil, fmt.Errorf("soak: the leg is over")
	default:
	}
	sl.down = false
	if sl.proc != nil {
		return sl.proc, nil
	}
	p, err := sl.launch()
	if err != nil {
		return nil, err
	}
	sl.proc = p
	return p, nil
}

// signal sends sig to the slot's process, holds the slot down (the supervisor does not
// restart it), and waits up to timeout for the process to exit; it returns the process
// signalled, or nil when none ran.
func (sl *slot) signal(sig syscall.Signal, timeout time.Duration) *proc {
	sl.mu.Lock()
	p := sl.proc
	sl.down = true
	if p != nil {
		p.stopping = true
	}
	sl.mu.Unlock()
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
	return p
}

// current returns the slot's running process, or nil.
func (sl *slot) current() *proc {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.proc
}

// startAll starts every slot's process and waits until each is ready.
func (s *supervisor) startAll(timeout time.Duration) error {
	var procs []*proc
	for _, sl := range s.slots {
		p, err := sl.up()
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	deadline := time.After(timeout)
	for i, p := range procs {
		select {
		case <-p.ready:
		case <-p.exited:
			return fmt.Errorf("soak: consumer %d exited at start: %s (see consumer-%d.log)", i, p.lastErr, i)
		case <-deadline:
			return fmt.Errorf("soak: consumer %d not ready within %s", i, timeout)
		}
	}
	return nil
}

// stopAll stops every process gracefully (SIGTERM, then SIGKILL after timeout) and
// keeps them down.
func (s *supervisor) stopAll(timeout time.Duration) {
	s.once.Do(func() { close(s.stopped) })
	var wg sync.WaitGroup
	for _, sl := range s.slots {
		wg.Go(func() { sl.signal(syscall.SIGTERM, timeout) })
	}
	wg.Wait()
}
