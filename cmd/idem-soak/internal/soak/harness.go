package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/idemkit/idem/dlq"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/postgres"
)

// Options configures a soak run.
type Options struct {
	Seed      uint64
	Events    int // per leg
	Legs      []string
	Consumers int
	// Rate paces publishing, in messages per second; 0 publishes as fast as the broker
	// takes them.
	Rate          float64
	Publishers    int
	Chaos         bool
	ChaosInterval time.Duration
	MaxAttempts   int
	CrashGuard    int
	Accounts      int
	Mix           Mix
	// DataDir holds the private servers' data and the consumers' logs; a new
	// temporary directory when empty, removed at the end unless Keep.
	DataDir string
	Keep    bool
	// DatabaseURL, AMQPURL, NATSURL and RedisURL use servers that are already running
	// instead of private ones; the chaos loop never restarts those.
	DatabaseURL, AMQPURL, NATSURL, RedisURL string
	// QuiesceTimeout bounds the wait, once everything was published, for every event
	// to reach its fate.
	QuiesceTimeout time.Duration
	// RequireServers turns a missing server program into a failure instead of a
	// skipped leg (CI sets it).
	RequireServers bool
	// SQLBatchSize is watermill-sql's SubscribeBatchSize on the sql leg.
	SQLBatchSize int
	// Log receives progress lines.
	Log io.Writer
}

// initialBalance is every account's balance at the start.
const initialBalance = 1_000_000

// env is what the legs of one run share.
type env struct {
	opts    Options
	exe     string
	dataDir string
	pg      *server // nil with Options.DatabaseURL
	dbURL   string  // the soak database
	admin   *pgxpool.Pool
	servers []string
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, "idem-soak: "+format+"\n", args...)
	}
}

// Run runs every leg of opts and returns the report. It returns an error only when it
// could not run at all (no PostgreSQL, say); a leg that fails is reported as such.
func Run(ctx context.Context, opts Options) (*Report, error) {
	start := time.Now()
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	e := &env{opts: opts, exe: exe}
	if opts.DataDir == "" {
		dir, err := os.MkdirTemp("", fmt.Sprintf("idem-soak-%d-", opts.Seed))
		if err != nil {
			return nil, err
		}
		e.dataDir = dir
		if !opts.Keep {
			defer os.RemoveAll(dir)
		}
	} else {
		e.dataDir = opts.DataDir
		if err := os.MkdirAll(e.dataDir, 0o755); err != nil {
			return nil, err
		}
	}
	_ = os.Chmod(e.dataDir, 0o755)
	if err := e.openDatabase(ctx); err != nil {
		return nil, err
	}
	defer e.close()

	rep := &Report{Seed: opts.Seed, Started: start, Machine: machine(), Config: RunSettings{
		Events: opts.Events, Consumers: opts.Consumers, MaxAttempts: opts.MaxAttempts, CrashGuard: opts.CrashGuard,
		Rate: opts.Rate, ChaosInterval: secondsOf(opts.ChaosInterval), Chaos: opts.Chaos, Mix: opts.Mix, PrivateDB: e.pg != nil,
	}}
	for _, leg := range opts.Legs {
		if ctx.Err() != nil {
			break
		}
		lr := e.runLeg(ctx, leg)
		rep.Legs = append(rep.Legs, lr)
		rep.Violations += lr.Violations
		opts.logf("%s: %d violations%s", leg, lr.Violations, cmpText(lr.Error != "", ", error: "+lr.Error, cmpText(lr.Skipped != "", ", skipped: "+lr.Skipped, "")))
	}
	rep.Servers = e.servers
	rep.Duration = secondsOf(time.Since(start))
	return rep, nil
}

// openDatabase starts the private PostgreSQL (unless Options.DatabaseURL) and creates
// the soak database.
func (e *env) openDatabase(ctx context.Context) error {
	url := e.opts.DatabaseURL
	if url == "" {
		dir := filepath.Join(e.dataDir, "postgres")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		log, err := os.Create(filepath.Join(e.dataDir, "postgres.log"))
		if err != nil {
			return err
		}
		pg, err := newPostgres(ctx, dir, log)
		if err != nil {
			return fmt.Errorf("soak: a private PostgreSQL: %w (or pass --database-url)", err)
		}
		if err := pg.start(ctx); err != nil {
			return err
		}
		e.pg = pg
		url = fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", pg.addr)
	}
	admin, err := connectRetry(ctx, url, time.Minute)
	if err != nil {
		return err
	}
	defer admin.Close()
	var version string
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	e.servers = append(e.servers, "PostgreSQL "+version+cmpText(e.pg != nil, " (private)", " (given)"))
	const db = "idem_soak"
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
			return err
		}
	}
	e.dbURL = replaceDatabase(url, db)
	e.admin, err = connectRetry(ctx, e.dbURL, time.Minute)
	return err
}

// replaceDatabase returns url with its database name replaced by db.
func replaceDatabase(url, db string) string {
	rest := ""
	if i := strings.IndexByte(url, '?'); i >= 0 {
		url, rest = url[:i], url[i:]
	}
	scheme := strings.Index(url, "://")
	if i := strings.LastIndexByte(url, '/'); i > scheme+2 {
		url = url[:i]
	}
	return url + "/" + db + rest
}

func (e *env) close() {
	if e.admin != nil {
		e.admin.Close()
	}
	if e.pg != nil {
		e.pg.close()
	}
}

// connectRetry opens a pool on url and pings it until it answers or timeout passes.
func connectRetry(ctx context.Context, url string, timeout time.Duration) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.ConnConfig.RuntimeParams["application_name"] = "idem-soak-harness"
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := pool.Ping(ctx)
		if err == nil {
			return pool, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			pool.Close()
			return nil, fmt.Errorf("soak: PostgreSQL at %s: %w", dlq.RedactURL(url), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// legRun is one leg in progress.
type legRun struct {
	e      *env
	leg    string
	rep    *LegReport
	cfg    LegConfig
	dir    string
	plan   Plan
	rng    *rand.Rand
	broker *broker
	server []*server // the private broker's processes (RabbitMQ: node, then epmd)
	sup    *supervisor
	prog   *progress
	start  time.Time

	mu          sync.Mutex
	faults      []*Fault
	crashExits  int
	otherExits  int
	stats       map[int]ConsumerStats // by pid
	alerted     map[string]int
	alertsRecv  int
	firstPub    []time.Time // per event: when its first copy's first publish began
	copies      map[string][]Copy
	pubAttempts int
	pubFailed   int
}

func legSeed(seed uint64, leg string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(leg))
	return seed ^ h.Sum64()
}

// runLeg runs one leg and returns its report; it never panics on a server's failure.
func (e *env) runLeg(ctx context.Context, leg string) LegReport {
	rep := LegReport{Leg: leg, Faults: map[string]int{}, Recovery: map[string]Latency{}}
	r := &legRun{e: e, leg: leg, rep: &rep, dir: filepath.Join(e.dataDir, leg), stats: map[int]ConsumerStats{},
		alerted: map[string]int{}, copies: map[string][]Copy{}, rng: rand.New(rand.NewPCG(legSeed(e.opts.Seed, leg), 7))}
	defer r.teardown()
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		rep.Error = err.Error()
		return rep
	}
	if err := r.run(ctx); err != nil {
		if errors.Is(err, ErrMissingProgram) && !e.opts.RequireServers {
			rep.Skipped = err.Error()
			return rep
		}
		rep.Error = err.Error()
		rep.Violations++ // a leg that could not run is a failure
	}
	return rep
}

func (r *legRun) teardown() {
	// The private servers go whatever happens to the clients.
	defer func() {
		for _, s := range r.server {
			s.close()
		}
	}()
	if r.sup != nil {
		r.sup.stopAll(20 * time.Second)
	}
	if r.prog != nil {
		r.prog.stop()
	}
	if r.broker != nil {
		// watermill-amqp v3.1.0's Publisher.Close panics on a pooled channel it failed
		// to reopen after the node restarted: the leg's outcome is known by now.
		defer func() {
			if p := recover(); p != nil {
				r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("closing the publisher panicked: %v", p))
			}
		}()
		r.broker.close()
	}
}

func (r *legRun) run(ctx context.Context) error {
	o := r.e.opts
	plan, err := NewPlan(PlanConfig{Seed: o.Seed, Events: o.Events, Mix: o.Mix, Accounts: o.Accounts, MaxAttempts: o.MaxAttempts})
	if err != nil {
		return err
	}
	r.plan = plan
	r.firstPub = make([]time.Time, len(plan.Events))
	r.cfg = LegConfig{Leg: r.leg, DatabaseURL: r.e.dbURL, Schema: "soak_" + r.leg, AckDeadline: ackDeadline(r.leg),
		Topic: fmt.Sprintf("soak_%s_%d", r.leg, o.Seed%1_000_000_000), SQLBatchSize: o.SQLBatchSize}
	if err := r.startBroker(ctx); err != nil {
		return err
	}
	if err := r.prepareSchema(ctx); err != nil {
		return fmt.Errorf("prepare the schema: %w", err)
	}
	if r.broker, err = newBroker(ctx, r.cfg, r.e.admin); err != nil {
		return fmt.Errorf("prepare the broker: %w", err)
	}
	hooks, err := r.serveHooks()
	if err != nil {
		return err
	}
	defer hooks.Close()

	ccfg := ConsumerConfig{LegConfig: r.cfg, MaxAttempts: o.MaxAttempts, CrashGuard: o.CrashGuard,
		WebhookURL: "http://" + hooks.Addr + "/alert", StatsURL: "http://" + hooks.Addr + "/stats"}
	r.sup = newSupervisor(r.e.exe, ccfg, o.Consumers, r.dir, r.consumerExited)
	if err := r.sup.startAll(2 * time.Minute); err != nil {
		return err
	}
	r.prog = newProgress(r.e.admin, pgx.Identifier{r.cfg.Schema, "effects"}.Sanitize())
	o.logf("%s: %d events, %d messages, %d consumers; %s", r.leg, len(plan.Events), len(plan.Schedule), o.Consumers, r.rep.Broker)

	r.start = time.Now()
	published := make(chan error, 1)
	pubCtx, cancelPub := context.WithCancel(ctx)
	defer cancelPub()
	go func() { published <- r.publish(pubCtx) }()

	chaosStop := make(chan struct{})
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		if o.Chaos {
			r.chaos(ctx, chaosStop)
		}
	}()
	stopChaos := sync.OnceFunc(func() { close(chaosStop); <-chaosDone })
	defer stopChaos()

	var pubErr error
	pubDone := false
	deadline := time.Time{}
	good, poison := r.goal()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	stable, lastLog := 0, time.Now()
	for {
		select {
		case pubErr = <-published:
			pubDone = true
			published = nil
			deadline = time.Now().Add(o.QuiesceTimeout)
			if pubErr != nil {
				return fmt.Errorf("publish: %w", pubErr)
			}
			o.logf("%s: published everything in %s", r.leg, time.Since(r.start).Round(time.Millisecond))
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !pubDone {
			continue
		}
		p, d, err := r.fates(ctx)
		held := "?"
		if err != nil {
			held = "cannot count: " + err.Error() // the database may be restarting
		} else if p >= good && d >= poison {
			held, err = r.broker.unfinished(ctx)
			if err != nil {
				held = err.Error()
			}
		}
		if time.Since(lastLog) > 10*time.Second {
			o.logf("%s: %d/%d applied, %d/%d dead-lettered; broker: %q", r.leg, p, good, d, poison, held)
			lastLog = time.Now()
		}
		if err == nil && float64(p+d) >= 0.97*float64(good+poison) {
			stopChaos()
		}
		if held == "" {
			stable++
		} else {
			stable = 0
		}
		if stable >= 3 {
			r.rep.Quiesced = true
			break
		}
		if time.Now().After(deadline) {
			r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("not quiescent %s after the last publish: %d/%d applied, %d/%d dead-lettered, broker %q",
				o.QuiesceTimeout, p, good, d, poison, held))
			break
		}
	}
	stopChaos()
	elapsed := time.Since(r.start)
	r.sup.stopAll(20 * time.Second)
	r.prog.stop()
	return r.finish(ctx, elapsed)
}

// goal returns how many events must be applied and how many dead-lettered.
func (r *legRun) goal() (good, poison int) {
	for _, ev := range r.plan.Events {
		if ev.Class.Good() {
			good++
		} else {
			poison++
		}
	}
	return good, poison
}

// fates counts the events applied (processed rows) and the events dead-lettered
// (distinct by the ID their payload names).
func (r *legRun) fates(ctx context.Context) (applied, deadLettered int, err error) {
	q := pgx.Identifier{r.cfg.Schema}.Sanitize()
	err = r.e.admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+q+`.processed WHERE consumer = $1),
		(SELECT count(DISTINCT coalesce(convert_from(payload, 'UTF8')::jsonb->>'id', event_id)) FROM `+q+`.dead_letters WHERE consumer = $1)`,
		consumerName).Scan(&applied, &deadLettered)
	return applied, deadLettered, err
}

// startBroker starts the leg's private broker, unless a URL was given.
func (r *legRun) startBroker(ctx context.Context) error {
	o := r.e.opts
	log, err := os.Create(filepath.Join(r.dir, "broker.log"))
	if err != nil {
		return err
	}
	switch r.leg {
	case LegSQL:
		r.cfg.BrokerURL = r.e.dbURL
		r.rep.Broker = "watermill-sql on PostgreSQL, consumer group " + consumerName
		return nil
	case LegRabbitMQ:
		r.rep.Broker = "RabbitMQ quorum queue (transports.AMQPQuorumConfig)"
		if o.AMQPURL != "" {
			r.cfg.BrokerURL = o.AMQPURL
		} else {
			node, epmd, err := newRabbitMQ(ctx, r.dir, log)
			if err != nil {
				return err
			}
			r.server = append(r.server, node, epmd)
			if err := node.start(ctx); err != nil {
				return err
			}
			r.cfg.BrokerURL = "amqp://guest:guest@" + node.addr + "/"
		}
		conn, err := dialAMQPRetry(r.cfg.BrokerURL, time.Minute)
		if err != nil {
			return err
		}
		v, _ := conn.Properties["version"].(string)
		_ = conn.Close()
		r.e.addServer("RabbitMQ " + v + cmpText(o.AMQPURL == "", " (private)", " (given)"))
	case LegNATS:
		r.rep.Broker = "NATS JetStream, file storage (transports.NATSJetStreamConfig)"
		if o.NATSURL != "" {
			r.cfg.BrokerURL = o.NATSURL
		} else {
			s, err := newNATS(filepath.Join(r.dir, "jetstream"), log)
			if err != nil {
				return err
			}
			r.server = append(r.server, s)
			if err := s.start(ctx); err != nil {
				return err
			}
			r.cfg.BrokerURL = "nats://" + s.addr
		}
		nc, err := nats.Connect(r.cfg.BrokerURL, natsOptions...)
		if err != nil {
			return err
		}
		r.e.addServer("NATS " + nc.ConnectedServerVersion() + cmpText(o.NATSURL == "", " (private)", " (given)"))
		nc.Close()
	case LegRedis:
		r.rep.Broker = "Redis Streams, consumer group, AOF fsync always"
		if o.RedisURL != "" {
			r.cfg.BrokerURL = o.RedisURL
		} else {
			s, err := newRedis(r.dir, log)
			if err != nil {
				return err
			}
			r.server = append(r.server, s)
			if err := s.start(ctx); err != nil {
				return err
			}
			r.cfg.BrokerURL = "redis://" + s.addr + "/0"
		}
		client, err := redisClient(r.cfg.BrokerURL)
		if err != nil {
			return err
		}
		info, _ := client.Info(ctx, "server").Result()
		_ = client.Close()
		v := "unknown"
		for _, line := range strings.Split(info, "\n") {
			if after, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				v = after
			}
		}
		r.e.addServer("Redis " + v + cmpText(o.RedisURL == "", " (private)", " (given)"))
	default:
		return fmt.Errorf("soak: unknown leg %q", r.leg)
	}
	return nil
}

func (e *env) addServer(s string) {
	for _, have := range e.servers {
		if have == s {
			return
		}
	}
	e.servers = append(e.servers, s)
}

func dialAMQPRetry(url string, timeout time.Duration) (*amqp.Connection, error) {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// prepareSchema creates the leg's schema afresh: idem's tables (postgres.Migrate), the
// ground truth, written before anything is published, the effects log (no unique key,
// on purpose), the accounts and the transient events' call counts.
func (r *legRun) prepareSchema(ctx context.Context) error {
	q := pgx.Identifier{r.cfg.Schema}.Sanitize()
	db := r.e.admin
	if _, err := db.Exec(ctx, "DROP SCHEMA IF EXISTS "+q+" CASCADE"); err != nil {
		return err
	}
	if r.leg == LegSQL {
		for _, t := range []string{sqlSchema(0).MessagesTable(r.cfg.Topic), wsql.DefaultPostgreSQLOffsetsAdapter{}.MessagesOffsetsTable(r.cfg.Topic)} {
			if _, err := db.Exec(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
				return err
			}
		}
	}
	if _, err := postgres.Migrate(ctx, db, postgres.MigrateConfig{Schema: r.cfg.Schema}); err != nil {
		return err
	}
	for _, stmt := range []string{
		`CREATE TABLE ` + q + `.events (id text PRIMARY KEY, class text NOT NULL, fail_first int NOT NULL,
			from_account int NOT NULL, to_account int NOT NULL, amount bigint NOT NULL, copies int NOT NULL)`,
		`CREATE TABLE ` + q + `.effects (id bigserial PRIMARY KEY, event_id text NOT NULL, instance int NOT NULL, pid int NOT NULL,
			trace_id text NOT NULL, parent_span_id text NOT NULL, applied_at timestamptz NOT NULL)`,
		`CREATE TABLE ` + q + `.accounts (id int PRIMARY KEY, balance bigint NOT NULL)`,
		`CREATE TABLE ` + q + `.calls (event_id text PRIMARY KEY, n int NOT NULL)`,
	} {
		if _, err := db.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	if _, err := db.Exec(ctx, "INSERT INTO "+q+".accounts (id, balance) SELECT g, $2 FROM generate_series(0, $1 - 1) AS g",
		r.e.opts.Accounts, initialBalance); err != nil {
		return err
	}
	rows := make([][]any, len(r.plan.Events))
	for i, ev := range r.plan.Events {
		rows[i] = []any{ev.ID, string(ev.Class), ev.FailFirst, ev.From, ev.To, ev.Amount, ev.Copies}
	}
	_, err := db.CopyFrom(ctx, pgx.Identifier{r.cfg.Schema, "events"},
		[]string{"id", "class", "fail_first", "from_account", "to_account", "amount", "copies"}, pgx.CopyFromRows(rows))
	return err
}

// serveHooks serves, on loopback, the webhook the consumers' dispatchers alert and the
// endpoint they report their counts to.
func (r *legRun) serveHooks() (*hooks, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /alert", func(w http.ResponseWriter, req *http.Request) {
		var body dlq.WebhookBody
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.alertsRecv++
		for _, id := range body.Alert.EventIDs {
			r.alerted[id]++
		}
		r.mu.Unlock()
	})
	mux.HandleFunc("POST /stats", func(w http.ResponseWriter, req *http.Request) {
		var s ConsumerStats
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		if prev, ok := r.stats[s.PID]; !ok || s.Deliveries >= prev.Deliveries {
			r.stats[s.PID] = s
		}
		r.mu.Unlock()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return &hooks{Addr: l.Addr().String(), srv: srv}, nil
}

type hooks struct {
	Addr string
	srv  *http.Server
}

func (h *hooks) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
}

// consumerExited records an exit of a consumer process that the harness did not ask
// for: a crash-poison event's os.Exit, or a failure.
func (r *legRun) consumerExited(instance, code int, lastErr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if code == crashExitCode {
		r.crashExits++
		return
	}
	r.otherExits++
	if r.otherExits <= 5 {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("consumer %d exited by itself with code %d: %s", instance, code, cmpText(lastErr != "", lastErr, "see its log")))
	}
}

// publish publishes the plan's schedule, with Options.Publishers goroutines, paced by
// Options.Rate. A failed publish is tried again (as a new message: a producer retrying)
// until it succeeds or 3 minutes passed.
func (r *legRun) publish(ctx context.Context) error {
	o := r.e.opts
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	traced, err := middleware.NewPublisher(r.broker.publisher, middleware.PublisherConfig{TracerProvider: tp, System: messagingSystem(r.leg)})
	if err != nil {
		return err
	}
	sends := make(chan Send)
	go func() {
		defer close(sends)
		var pace *time.Ticker
		perTick := 1
		if o.Rate > 0 {
			interval := time.Duration(float64(time.Second) / o.Rate)
			if interval < 5*time.Millisecond {
				perTick = int(o.Rate / 200)
				interval = 5 * time.Millisecond
			}
			pace = time.NewTicker(interval)
			defer pace.Stop()
		}
		for i, s := range r.plan.Schedule {
			if pace != nil && i%perTick == 0 {
				select {
				case <-pace.C:
				case <-ctx.Done():
					return
				}
			}
			select {
			case sends <- s:
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range max(o.Publishers, 1) {
		wg.Go(func() {
			for s := range sends {
				if err := r.publishOne(ctx, traced, s); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return ctx.Err()
}

func (r *legRun) publishOne(ctx context.Context, traced *middleware.Publisher, s Send) error {
	ev := r.plan.Events[s.Event]
	body, _ := json.Marshal(payload{ID: ev.ID, Class: ev.Class, FailFirst: ev.FailFirst, From: ev.From, To: ev.To, Amount: ev.Amount})
	giveUp := time.Now().Add(3 * time.Minute)
	wait := 50 * time.Millisecond
	for {
		msg := message.NewMessage(watermill.NewUUID(), body)
		began := time.Now()
		var err error
		if ev.Class == ClassMalformed {
			// No event ID; the same metadata on every copy, as a producer resending
			// the same bytes would.
			msg.Metadata.Set("soak_note", "published without an event_id")
			err = r.broker.publisher.Publish(r.cfg.Topic, msg)
		} else {
			msg.Metadata.Set("event_id", ev.ID)
			err = traced.Publish(r.cfg.Topic, msg)
		}
		r.mu.Lock()
		r.pubAttempts++
		if s.Copy == 0 && r.firstPub[s.Event].IsZero() {
			r.firstPub[s.Event] = began
		}
		if c, ok := parseTraceparent(msg.Metadata.Get("traceparent")); ok {
			r.copies[ev.ID] = append(r.copies[ev.ID], c)
		}
		if err != nil {
			r.pubFailed++
		}
		r.mu.Unlock()
		if err == nil {
			return nil
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("publish %s copy %d: %w", ev.ID, s.Copy, err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// parseTraceparent reads a W3C traceparent: version-trace-span-flags.
func parseTraceparent(v string) (Copy, bool) {
	parts := strings.Split(v, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		return Copy{}, false
	}
	return Copy{TraceID: parts[1], SpanID: parts[2]}, true
}

// machine describes this machine.
func machine() Machine {
	m := Machine{CPUs: cpuCount(), OS: "linux", Go: goVersion()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if after, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(after), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if after, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(after, `"`)
			}
		}
	}
	return m
}

// progress polls the highest effects row ID, which grows with every commit of a
// handler's transaction, so that the harness can tell when consumption resumed after
// a fault.
type progress struct {
	pool  *pgxpool.Pool
	query string
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	value   int64
	changed chan struct{} // closed and replaced when value grows
}

func newProgress(pool *pgxpool.Pool, effects string) *progress {
	p := &progress{pool: pool, query: "SELECT coalesce(max(id), 0) FROM " + effects, done: make(chan struct{}), changed: make(chan struct{})}
	go p.run()
	return p
}

func (p *progress) run() {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var v int64
		err := p.pool.QueryRow(ctx, p.query).Scan(&v)
		cancel()
		if err != nil {
			continue
		}
		p.mu.Lock()
		if v > p.value {
			p.value = v
			close(p.changed)
			p.changed = make(chan struct{})
		}
		p.mu.Unlock()
	}
}

func (p *progress) stop() { p.once.Do(func() { close(p.done) }) }

// advance waits until the value grows past what it is now, and returns when it was
// seen to; ok is false when it did not within timeout.
func (p *progress) advance(timeout time.Duration) (time.Time, bool) {
	p.mu.Lock()
	changed := p.changed
	p.mu.Unlock()
	select {
	case <-changed:
		return time.Now(), true
	case <-time.After(timeout):
		return time.Time{}, false
	case <-p.done:
		return time.Time{}, false
	}
}

// chaosKinds are the faults the chaos loop picks from, with their weights.
type chaosKind struct {
	name   string
	weight int
}

// chaos injects faults at random intervals around Options.ChaosInterval until stop is
// closed, then brings every consumer and server back up.
func (r *legRun) chaos(ctx context.Context, stop <-chan struct{}) {
	kinds := []chaosKind{{"sigkill-consumer", 35}, {"sigterm-consumer", 15}, {"terminate-backends", 25}}
	if len(r.server) > 0 {
		kinds = append(kinds, chaosKind{"restart-broker", 12})
	}
	if r.e.pg != nil {
		kinds = append(kinds, chaosKind{"restart-postgres", 13})
	}
	total := 0
	for _, k := range kinds {
		total += k.weight
	}
	var measuring sync.WaitGroup
	defer measuring.Wait()
	defer r.restore(ctx)
	for {
		d := time.Duration(float64(r.e.opts.ChaosInterval) * (0.5 + r.rng.Float64()))
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		n := r.rng.IntN(total)
		var kind string
		for _, k := range kinds {
			if n < k.weight {
				kind = k.name
				break
			}
			n -= k.weight
		}
		f := &Fault{Kind: kind, At: secondsOf(time.Since(r.start)), Recovery: -1}
		r.mu.Lock()
		r.faults = append(r.faults, f)
		r.mu.Unlock()
		r.inject(ctx, f, stop, &measuring)
	}
}

// inject injects one fault, and measures its recovery in the background.
func (r *legRun) inject(ctx context.Context, f *Fault, stop <-chan struct{}, measuring *sync.WaitGroup) {
	began := time.Now()
	setRecovery := func(at time.Time) {
		r.mu.Lock()
		f.Recovery = secondsOf(at.Sub(began))
		r.mu.Unlock()
	}
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-stop:
		}
	}
	switch f.Kind {
	case "sigkill-consumer", "sigterm-consumer":
		sl := r.sup.slots[r.rng.IntN(len(r.sup.slots))]
		f.Target = fmt.Sprintf("consumer %d", sl.instance)
		sig, wait := syscall.SIGKILL, 5*time.Second
		if f.Kind == "sigterm-consumer" {
			sig, wait = syscall.SIGTERM, 20*time.Second
		}
		if sl.signal(sig, wait) == nil {
			f.Target += " (was not running)"
		}
		pause(time.Duration(r.rng.IntN(1500)) * time.Millisecond)
		f.Outage = secondsOf(time.Since(began))
		p, err := sl.up()
		if err != nil {
			return
		}
		measuring.Go(func() {
			select {
			case <-p.first:
				r.mu.Lock()
				at := p.firstAt
				r.mu.Unlock()
				setRecovery(at)
			case <-p.exited:
			case <-time.After(2 * time.Minute):
			}
		})
	case "terminate-backends":
		sl := r.sup.slots[r.rng.IntN(len(r.sup.slots))]
		f.Target = fmt.Sprintf("consumer %d's connections", sl.instance)
		var n int
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.e.admin.QueryRow(tctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
			consumerAppName(r.leg, sl.instance)).Scan(&n)
		cancel()
		if err != nil {
			f.Target += " (failed: " + err.Error() + ")"
		} else {
			f.Target += fmt.Sprintf(" (%d)", n)
		}
		measuring.Go(func() {
			if at, ok := r.prog.advance(2 * time.Minute); ok {
				setRecovery(at)
			}
		})
	case "restart-broker", "restart-postgres":
		s := r.e.pg
		sig := syscall.SIGINT // fast shutdown
		if f.Kind == "restart-broker" {
			s, sig = r.server[0], syscall.SIGTERM
		} else if r.rng.IntN(2) == 0 {
			sig = syscall.SIGQUIT // immediate shutdown: crash recovery at the next start
		}
		f.Target = s.name + " (" + sig.String() + ")"
		if err := s.stop(sig); err != nil {
			f.Target += " " + err.Error()
		}
		pause(time.Duration(500+r.rng.IntN(2500)) * time.Millisecond)
		if err := s.start(ctx); err != nil {
			f.Target += " start: " + err.Error()
		}
		f.Outage = secondsOf(time.Since(began))
		measuring.Go(func() {
			if at, ok := r.prog.advance(2 * time.Minute); ok {
				setRecovery(at)
			}
		})
	}
}

// restore brings every server and consumer back up once the chaos ends.
func (r *legRun) restore(ctx context.Context) {
	if r.e.pg != nil {
		_ = r.e.pg.start(ctx) // running already, most likely: an error then
	}
	for _, s := range r.server {
		_ = s.start(ctx)
	}
	for _, sl := range r.sup.slots {
		if p, err := sl.up(); err == nil {
			select {
			case <-p.ready:
			case <-p.exited:
			case <-time.After(time.Minute):
			}
		}
	}
}

// finish reads everything back after the consumers stopped, checks the invariants and
// fills the report.
func (r *legRun) finish(ctx context.Context, elapsed time.Duration) error {
	rep := r.rep
	var unfinished string
	for i := 0; ; i++ {
		held, err := r.broker.unfinished(ctx)
		if err == nil {
			unfinished = held
			break
		}
		if i == 20 {
			unfinished = "cannot tell: " + err.Error()
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	events, err := r.readTruth(ctx)
	if err != nil {
		return fmt.Errorf("read the ground truth: %w", err)
	}
	obs, latencies, err := r.observe(ctx)
	if err != nil {
		return fmt.Errorf("read the outcome: %w", err)
	}
	obs.Unfinished = unfinished

	r.mu.Lock()
	defer r.mu.Unlock()
	obs.Alerted = r.alerted
	obs.Published = r.copies
	rep.Invariants = Check(events, obs)
	rep.Violations = Violations(rep.Invariants)

	rep.Events = len(events)
	rep.Classes = r.plan.Counts()
	rep.Messages = len(r.plan.Schedule)
	for _, ev := range r.plan.Events {
		switch ev.Copies {
		case 1:
			rep.Copies.One++
		case 2:
			rep.Copies.Two++
		case 3:
			rep.Copies.Three++
		}
	}
	for _, s := range r.plan.Schedule {
		if s.Copy > 0 && s.Late {
			rep.Copies.Late++
		} else if s.Copy > 0 {
			rep.Copies.Adjacent++
		}
	}
	rep.Published = PublishCounts{Attempts: r.pubAttempts, Failed: r.pubFailed}
	rep.CrashExits, rep.OtherExits, rep.ProcessStart = r.crashExits, r.otherExits, r.sup.starts()
	rec := map[string][]time.Duration{}
	for _, f := range r.faults {
		rep.Faults[f.Kind]++
		rep.FaultLog = append(rep.FaultLog, *f)
		if f.Recovery >= 0 {
			rec[f.Kind] = append(rec[f.Kind], time.Duration(float64(f.Recovery)*float64(time.Second)))
		}
	}
	for k, ds := range rec {
		rep.Recovery[k] = latencyOf(ds)
	}
	rep.Outcomes = map[string]int64{}
	for _, s := range r.stats {
		rep.Deliveries += s.Deliveries
		rep.HandlerCalls += s.HandlerCalls
		rep.Retries += s.Retries
		rep.Alerts.Sent += s.AlertsSent
		rep.Alerts.Failed += s.AlertsFailed
		rep.Alerts.Dropped += s.AlertsDropped
		for k, v := range s.Outcomes {
			rep.Outcomes[k] += v
		}
	}
	rep.Alerts.Received = r.alertsRecv
	rep.Alerts.Events = len(r.alerted)
	rep.DeadLetters = len(obs.DeadLetters)
	rep.DeadLetterBy = map[string]int{}
	for _, d := range obs.DeadLetters {
		rep.DeadLetterBy[d.Reason]++
	}
	rep.Duration = secondsOf(elapsed)
	if elapsed > 0 {
		rep.Throughput = float64(len(events)) / elapsed.Seconds()
		rep.DeliveryPS = float64(rep.Deliveries) / elapsed.Seconds()
	}
	rep.Latency = latencyOf(latencies)
	final := 0
	for _, s := range r.stats {
		if s.Final {
			final++
		}
	}
	if final < rep.ProcessStart {
		rep.Notes = append(rep.Notes, fmt.Sprintf("deliveries, outcomes and retries are the consumer processes' own counts, reported every 500ms: "+
			"%d of %d processes were killed or crashed before their final report, and what they counted after their last one is missing", rep.ProcessStart-final, rep.ProcessStart))
	}
	return nil
}

// readTruth reads the ground truth back from its table.
func (r *legRun) readTruth(ctx context.Context) ([]Event, error) {
	rows, err := r.e.admin.Query(ctx, "SELECT id, class, fail_first, from_account, to_account, amount, copies FROM "+
		pgx.Identifier{r.cfg.Schema, "events"}.Sanitize()+" ORDER BY id")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		var ev Event
		var class string
		err := row.Scan(&ev.ID, &class, &ev.FailFirst, &ev.From, &ev.To, &ev.Amount, &ev.Copies)
		ev.Class = Class(class)
		return ev, err
	})
}

// observe reads the effects, processed rows, dead letters and balances, and the
// end-to-end latency of each applied good event.
func (r *legRun) observe(ctx context.Context) (Observed, []time.Duration, error) {
	q := pgx.Identifier{r.cfg.Schema}.Sanitize()
	db := r.e.admin
	obs := Observed{Applied: map[string]Applied{}, Processed: map[string]bool{}, Balances: map[int]int64{}, InitialBalance: initialBalance}
	index := make(map[string]int, len(r.plan.Events))
	for i, ev := range r.plan.Events {
		index[ev.ID] = i
	}
	var latencies []time.Duration
	rows, err := db.Query(ctx, "SELECT event_id, count(*), min(trace_id), min(parent_span_id), min(applied_at) FROM "+q+".effects GROUP BY event_id")
	if err != nil {
		return obs, nil, err
	}
	for rows.Next() {
		var id string
		var a Applied
		var at time.Time
		if err := rows.Scan(&id, &a.Rows, &a.TraceID, &a.ParentSpanID, &at); err != nil {
			return obs, nil, err
		}
		obs.Applied[id] = a
		if i, ok := index[id]; ok && r.plan.Events[i].Class.Good() && !r.firstPub[i].IsZero() {
			latencies = append(latencies, max(at.Sub(r.firstPub[i]), 0))
		}
	}
	if err := rows.Err(); err != nil {
		return obs, nil, err
	}
	rows, err = db.Query(ctx, "SELECT event_id FROM "+q+".processed WHERE consumer = $1", consumerName)
	if err != nil {
		return obs, nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return obs, nil, err
	}
	for _, id := range ids {
		obs.Processed[id] = true
	}
	rows, err = db.Query(ctx, "SELECT event_id, payload, reason, count, trace_id, metadata::text FROM "+q+".dead_letters WHERE consumer = $1 ORDER BY id", consumerName)
	if err != nil {
		return obs, nil, err
	}
	for rows.Next() {
		var d DeadLetterRow
		var body []byte
		var md string
		if err := rows.Scan(&d.EventID, &body, &d.Reason, &d.Count, &d.TraceID, &md); err != nil {
			return obs, nil, err
		}
		d.Metadata, _ = dlq.DecodeMetadata([]byte(md))
		var p payload
		if json.Unmarshal(body, &p) == nil {
			d.SoakID = p.ID
		}
		obs.DeadLetters = append(obs.DeadLetters, d)
	}
	if err := rows.Err(); err != nil {
		return obs, nil, err
	}
	rows, err = db.Query(ctx, "SELECT id, balance FROM "+q+".accounts")
	if err != nil {
		return obs, nil, err
	}
	for rows.Next() {
		var id int
		var b int64
		if err := rows.Scan(&id, &b); err != nil {
			return obs, nil, err
		}
		obs.Balances[id] = b
	}
	return obs, latencies, rows.Err()
}
