package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/middleware"
	"github.com/idemkit/idem/retry"
)

// The events. Events are named in the past tense: something that happened, announced
// by the module that owns it. Every message carries the metadata event_id (the dedup
// key, the same on every copy of one event), event_type and event_version.

// OrderPlaced is published by orders once an order has committed. Version 1.
type OrderPlaced struct {
	OrderID    string `json:"order_id"`
	Customer   string `json:"customer"`
	TotalCents int64  `json:"total_cents"`
}

// PaymentCaptured is published by payments once a payment is recorded. Version 1.
type PaymentCaptured struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
}

// orderPlacedV2 is what the next release of orders publishes: the total became an
// amount with a currency. Decoded as version 1 it would not fail: unknown fields are
// ignored, and the order would be paid with a total of 0. Hence the version check.
type orderPlacedV2 struct {
	OrderID  string `json:"order_id"`
	Customer string `json:"customer"`
	Total    struct {
		Amount   string `json:"amount"`
		Currency string `json:"currency"`
	} `json:"total"`
}

// schema names an event type and the major version of its payload.
type schema struct {
	Type  string
	Major int
}

var (
	orderPlacedV1     = schema{"OrderPlaced", 1}
	paymentCapturedV1 = schema{"PaymentCaptured", 1}
)

// check refuses a message of another event type or another major version with a
// permanent error: no retry makes this build understand it, so idem dead-letters it on
// its first failure and keeps it, byte for byte, to be replayed once consumers that
// know it are deployed. Minor versions ("1.3") only add fields, which decoding ignores.
func (s schema) check(md message.Metadata) error {
	if t := md.Get(middleware.EventTypeKey); t != s.Type {
		return retry.Permanent(fmt.Errorf("event_type %q: this handler reads %s", t, s.Type))
	}
	v := md.Get(middleware.EventVersionKey)
	major, _, _ := strings.Cut(v, ".")
	if n, err := strconv.Atoi(major); err != nil || n != s.Major || major != strconv.Itoa(n) {
		return retry.Permanent(fmt.Errorf("%s event_version %q: this handler knows version %d only", s.Type, v, s.Major))
	}
	return nil
}

// newEvent returns a message carrying payload as JSON, with its event ID, type and
// version in the metadata.
func newEvent(s schema, eventID string, payload any) (*message.Message, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", s.Type, err)
	}
	msg := message.NewMessage(watermill.NewUUID(), body)
	msg.Metadata.Set(dedup.MetadataKey, eventID)
	msg.Metadata.Set(middleware.EventTypeKey, s.Type)
	msg.Metadata.Set(middleware.EventVersionKey, strconv.Itoa(s.Major))
	return msg, nil
}

func orderID(n int) string                { return fmt.Sprintf("ord-%d", n) }
func orderPlacedID(orderID string) string { return "order-placed:" + orderID }
