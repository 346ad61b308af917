package consumer

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// VersionedConfig configures [Versioned] and [VersionedConsumer]: the event types a
// handler knows, each version it knows, and how old versions reach a handler.
type VersionedConfig struct {
	// Events are the handlers, one for each version of an event type that has a
	// handler of its own, each with the upcasters that bring older versions of its
	// type up to it. A version of a type is registered once, as a handler's Version
	// or as an upcaster's source. Required: at least one.
	Events []EventHandler
	// DefaultVersion is the version of a message that has no event_version
	// metadata: events published before their producer set versions were version 1.
	// Defaults to 1. -1 takes no default: such a message is dead-lettered as
	// permanent, like an unknown version.
	DefaultVersion int
}

// EventHandler handles one version of one event type, and the older versions of that
// type that its Upcasters bring up to it.
type EventHandler struct {
	// Type is the event type, as producers set it in the metadata event_type
	// (middleware.EventTypeKey): "OrderPlaced". Required.
	Type string
	// Version is the version of Type that the handler reads, as producers set it in
	// the metadata event_version (middleware.EventVersionKey). Required: 1 or more.
	Version int
	// Handler handles a message of Type at Version, typically a typed handler:
	// JSON, postgres.Handler or sqlite.Handler, decoding the payload into the Go type
	// of Version. Set Handler or ProducingHandler.
	Handler message.NoPublishHandlerFunc
	// ProducingHandler is Handler for a handler that returns messages to produce;
	// only [Versioned] takes it, for Consumer.AddHandler or Consumer.Wrap. Set
	// Handler or ProducingHandler.
	ProducingHandler message.HandlerFunc
	// Upcasters bring older versions of Type up to Version, one version at a time,
	// each made with [Upcast]: from Version-1 to Version, from Version-2 to
	// Version-1, and so on down to the oldest version they cover, with no gap, in
	// any order. The last returns the Go type the handler decodes. Defaults to none:
	// only Version itself is handled.
	Upcasters []Upcaster
}

// Upcaster turns the payload of one version of an event into the next version's. Make
// one with [Upcast]; [Versioned] refuses the zero Upcaster.
type Upcaster struct {
	from    int
	in, out reflect.Type
	decode  func(payload []byte) (any, error)
	apply   func(event any) (any, error)
}

// Upcast returns the Upcaster from version from of an event to version from+1. The
// payload of version from is decoded from JSON into a From as [Decode] does (a payload
// that does not decode is a permanent [*DecodeError]), and fn returns it as the next
// version's To. Chained upcasters hand their values to each other; the last result is
// encoded as JSON for the handler. fn must depend on the event alone: an error it
// returns is permanent, and the message is dead-lettered without retries.
func Upcast[From, To any](from int, fn func(From) (To, error)) Upcaster {
	return Upcaster{
		from: from,
		in:   reflect.TypeFor[From](),
		out:  reflect.TypeFor[To](),
		decode: func(payload []byte) (any, error) {
			return Decode[From](payload)
		},
		apply: func(event any) (any, error) {
			return fn(event.(From))
		},
	}
}

// UnknownEventError reports a message whose event type, or whose version of a known
// type, the handler does not know: no retry makes this build understand it. It is
// returned wrapped in retry.Permanent, so the message is dead-lettered at once and
// kept, byte for byte, for a replay once consumers that know it are deployed.
type UnknownEventError struct {
	// Type is the message's event_type metadata, as it came; "" when missing.
	Type string
	// Version is the message's event_version metadata, as it came; "" when missing.
	Version string
	// DefaultVersion is the version a missing Version stands for, or -1 for none
	// (VersionedConfig.DefaultVersion).
	DefaultVersion int
	// Known holds every version the handler knows, ascending, by event type. It is
	// shared by every error of one handler: read it, do not modify it.
	Known map[string][]int
}

// Error names the message's type and version and the versions the handler knows:
// `OrderPlaced event_version "3": this handler knows versions 1 and 2 only`.
func (e *UnknownEventError) Error() string {
	versions, known := e.Known[e.Type]
	if !known {
		typ := "event_type missing"
		if e.Type != "" {
			typ = fmt.Sprintf("event_type %q", e.Type)
		}
		types := make([]string, 0, len(e.Known))
		for _, t := range slices.Sorted(maps.Keys(e.Known)) {
			types = append(types, fmt.Sprintf("%s (%s)", t, versionList(e.Known[t])))
		}
		return fmt.Sprintf("%s (event_version %q): this handler knows %s only", typ, e.Version, joinAnd(types))
	}
	var version string
	switch _, ok := parseVersion(e.Version); {
	case e.Version == "" && e.DefaultVersion > 0:
		version = fmt.Sprintf("event_version missing (taken as %d)", e.DefaultVersion)
	case e.Version == "":
		version = "event_version missing (no default version)"
	case !ok:
		version = fmt.Sprintf("event_version %q is not a version number", e.Version)
	default:
		version = fmt.Sprintf("event_version %q", e.Version)
	}
	return fmt.Sprintf("%s %s: this handler knows %s only", e.Type, version, versionList(versions))
}

// Permanent reports true: no retry makes this build know the event.
func (e *UnknownEventError) Permanent() bool { return true }

// versionList reads "version 1" or "versions 1, 2 and 3".
func versionList(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.Itoa(v)
	}
	if len(s) == 1 {
		return "version " + s[0]
	}
	return "versions " + joinAnd(s)
}

func joinAnd(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// parseVersion reads an event_version: a major version, 1 or more, in decimal without
// sign or leading zeros, optionally followed by a dot and a minor version (0 or more),
// which it ignores: a minor version only adds fields, which decoding ignores.
func parseVersion(s string) (int, bool) {
	major, minor, dotted := strings.Cut(s, ".")
	if !canonical(major) || major == "0" || (dotted && !canonical(minor)) {
		return 0, false
	}
	v, err := strconv.Atoi(major)
	return v, err == nil
}

// canonical reports whether s is a decimal number without sign or leading zeros.
func canonical(s string) bool {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func (c VersionedConfig) withDefaults() VersionedConfig {
	c.DefaultVersion = cmp.Or(c.DefaultVersion, 1)
	return c
}

// route is how one version of one type reaches its handler.
type route struct {
	chain   []Upcaster // from this version up to target; empty when this is target
	target  int
	handler message.HandlerFunc
}

type dispatcher struct {
	routes         map[string]map[int]route
	known          map[string][]int
	defaultVersion int
}

// newDispatcher checks cfg, for the constructor named fn, and builds the routes.
func newDispatcher(fn string, cfg VersionedConfig, producing bool) (*dispatcher, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Events) == 0 {
		return nil, errors.New("consumer: VersionedConfig.Events is required: at least one event type and version to handle")
	}
	if cfg.DefaultVersion < -1 {
		return nil, fmt.Errorf("consumer: VersionedConfig.DefaultVersion must be 1 or more, or -1 for none; got %d", cfg.DefaultVersion)
	}
	d := &dispatcher{routes: map[string]map[int]route{}, known: map[string][]int{}, defaultVersion: cfg.DefaultVersion}
	registered := map[string]map[int]string{} // type -> version -> the field that registered it
	register := func(typ string, version int, field string) error {
		if registered[typ] == nil {
			registered[typ] = map[int]string{}
		}
		if first, dup := registered[typ][version]; dup {
			return fmt.Errorf("consumer: VersionedConfig.%s: %s version %d is registered twice, first by %s", field, typ, version, first)
		}
		registered[typ][version] = field
		return nil
	}
	for i, e := range cfg.Events {
		field := fmt.Sprintf("Events[%d]", i)
		if e.Type == "" {
			return nil, fmt.Errorf("consumer: VersionedConfig.%s.Type is required", field)
		}
		if e.Version < 1 {
			return nil, fmt.Errorf("consumer: VersionedConfig.%s.Version is required: the version of %s that its handler reads, 1 or more; got %d", field, e.Type, e.Version)
		}
		var h message.HandlerFunc
		switch {
		case e.Handler != nil && e.ProducingHandler != nil:
			return nil, fmt.Errorf("consumer: VersionedConfig.%s: set Handler or ProducingHandler, not both", field)
		case e.Handler != nil:
			nh := e.Handler
			h = func(msg *message.Message) ([]*message.Message, error) { return nil, nh(msg) }
		case e.ProducingHandler != nil && !producing:
			return nil, fmt.Errorf("consumer: VersionedConfig.%s.ProducingHandler: %s cannot produce messages; use Versioned with Consumer.AddHandler, or set Handler", field, fn)
		case e.ProducingHandler != nil:
			h = e.ProducingHandler
		default:
			return nil, fmt.Errorf("consumer: VersionedConfig.%s.Handler is required: the handler of %s version %d", field, e.Type, e.Version)
		}
		if err := register(e.Type, e.Version, field+".Version"); err != nil {
			return nil, err
		}
		for j, u := range e.Upcasters {
			upField := fmt.Sprintf("%s.Upcasters[%d]", field, j)
			switch {
			case u.apply == nil:
				return nil, fmt.Errorf("consumer: VersionedConfig.%s is the zero Upcaster: make it with consumer.Upcast", upField)
			case u.from < 1 || u.from >= e.Version:
				return nil, fmt.Errorf("consumer: VersionedConfig.%s upcasts %s from version %d, which is not between 1 and %s.Version - 1 (%d)",
					upField, e.Type, u.from, field, e.Version-1)
			}
			if err := register(e.Type, u.from, upField); err != nil {
				return nil, err
			}
		}
		chain, err := upcastChain(field, e)
		if err != nil {
			return nil, err
		}
		for j, u := range chain {
			d.add(e.Type, u.from, route{chain: chain[j:], target: e.Version, handler: h})
		}
		d.add(e.Type, e.Version, route{target: e.Version, handler: h})
	}
	for typ := range d.known {
		slices.Sort(d.known[typ])
	}
	return d, nil
}

func (d *dispatcher) add(typ string, version int, r route) {
	if d.routes[typ] == nil {
		d.routes[typ] = map[int]route{}
	}
	d.routes[typ][version] = r
	d.known[typ] = append(d.known[typ], version)
}

// upcastChain returns e's upcasters oldest first, and checks that they are contiguous,
// end at e.Version and each take the Go type the one before returns. Their sources are
// registered already: distinct, and older than e.Version.
func upcastChain(field string, e EventHandler) ([]Upcaster, error) {
	chain := slices.Clone(e.Upcasters)
	slices.SortFunc(chain, func(a, b Upcaster) int { return a.from - b.from })
	for j, u := range chain {
		next := e.Version
		if j+1 < len(chain) {
			next = chain[j+1].from
		}
		if next != u.from+1 {
			return nil, fmt.Errorf("consumer: VersionedConfig.%s.Upcasters: the chain from %s version %d to %d has a gap: no upcaster from version %d",
				field, e.Type, chain[0].from, e.Version, u.from+1)
		}
		if j > 0 && u.in != chain[j-1].out {
			return nil, fmt.Errorf("consumer: VersionedConfig.%s.Upcasters: the upcaster from %s version %d returns %s, but the upcaster from version %d takes %s",
				field, e.Type, chain[j-1].from, chain[j-1].out, u.from, u.in)
		}
	}
	return chain, nil
}

func (d *dispatcher) handle(msg *message.Message) ([]*message.Message, error) {
	typ, raw := msg.Metadata.Get(middleware.EventTypeKey), msg.Metadata.Get(middleware.EventVersionKey)
	unknown := func() error {
		return retry.Permanent(&UnknownEventError{Type: typ, Version: raw, DefaultVersion: d.defaultVersion, Known: d.known})
	}
	routes, ok := d.routes[typ]
	if !ok {
		return nil, unknown()
	}
	version := d.defaultVersion
	if raw != "" {
		v, ok := parseVersion(raw)
		if !ok {
			return nil, unknown()
		}
		version = v
	}
	r, ok := routes[version]
	if !ok {
		return nil, unknown()
	}
	if len(r.chain) == 0 {
		return r.handler(msg)
	}
	payload, err := r.upcast(msg.Payload)
	if err != nil {
		return nil, retry.Permanent(fmt.Errorf("upcast %s from version %d to %d: %w", typ, version, r.target, err))
	}
	// A new message: the one the broker delivered stays as it came, for a dead letter.
	upcast := message.NewMessage(msg.UUID, payload)
	for k, v := range msg.Metadata {
		upcast.Metadata.Set(k, v)
	}
	upcast.Metadata.Set(middleware.EventVersionKey, strconv.Itoa(r.target))
	upcast.SetContext(msg.Context())
	return r.handler(upcast)
}

// upcast runs payload through r's chain and returns the target version's JSON.
func (r route) upcast(payload []byte) ([]byte, error) {
	event, err := r.chain[0].decode(payload)
	if err != nil {
		return nil, err
	}
	for _, u := range r.chain {
		if event, err = u.apply(event); err != nil {
			return nil, fmt.Errorf("from version %d: %w", u.from, err)
		}
	}
	out, err := json.Marshal(event)
	if err != nil {
		return nil, fmt.Errorf("encode version %d: %w", r.target, err)
	}
	return out, nil
}

// Versioned returns a handler that dispatches each message by its event type and
// version, the metadata event_type and event_version (middleware.EventTypeKey and
// middleware.EventVersionKey), to the EventHandler registered for them. A message of
// an older version that upcasters cover is upcast first: decoded, passed up the chain,
// and handed to the handler as a copy of the message whose payload is the JSON of the
// handler's version and whose event_version is that version; the delivered message is
// left as it came. An event_version "2.1" is version 2: a minor version only adds
// fields. A message without event_version is of cfg.DefaultVersion.
//
// An event type or version the handler does not know, and an event_version that is not
// a version, fail with a permanent [*UnknownEventError] whose text names the type, the
// version and the versions the handler knows; an old version that does not decode or
// upcast fails permanently too. Either way the message is dead-lettered at once, not
// misread. Wrap the result in the consumer's stack (Consumer.AddHandler or
// Consumer.Wrap): dedup then covers every version alike, since the event ID does not
// change with the version.
//
// Versioned returns an error naming the field when cfg is invalid: no events, a
// missing type, version or handler, a version registered twice, or upcasters with a
// gap or whose types do not chain. The handler is safe for concurrent use when the
// handlers it dispatches to are.
func Versioned(cfg VersionedConfig) (message.HandlerFunc, error) {
	d, err := newDispatcher("Versioned", cfg, true)
	if err != nil {
		return nil, err
	}
	return d.handle, nil
}

// VersionedConsumer is [Versioned] for handlers that produce no messages, for
// Consumer.AddConsumerHandler or Consumer.WrapConsumer. It refuses an EventHandler
// with a ProducingHandler.
func VersionedConsumer(cfg VersionedConfig) (message.NoPublishHandlerFunc, error) {
	d, err := newDispatcher("VersionedConsumer", cfg, false)
	if err != nil {
		return nil, err
	}
	return func(msg *message.Message) error {
		_, err := d.handle(msg)
		return err
	}, nil
}
