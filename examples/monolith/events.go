package main

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem/consumer"
	"github.com/idemkit/idem/dedup"
	"github.com/idemkit/idem/middleware"
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
// ignored, and the order would be paid with a total of 0. Hence the version dispatch
// (readsOnly). Consumers learn a version before producers publish it: their next build
// registers version 2, with an upcaster from version 1 (consumer.Upcast). Here orders
// went first, half-way through a rolling deploy.
type orderPlacedV2 struct {
	OrderID  string `json:"order_id"`
	Customer string `json:"customer"`
	Total    struct {
		Amount   string `json:"amount"`
		Currency string `json:"currency"`
	} `json:"total"`
}

// schema names an event type and a version of its payload.
type schema struct {
	Type    string
	Version int
}

var (
	orderPlacedV1     = schema{"OrderPlaced", 1}
	paymentCapturedV1 = schema{"PaymentCaptured", 1}
)

// readsOnly is the version dispatch (consumer.Versioned) of a consumer that reads
// version s of one event type with h. idem refuses a message of another event type or
// another version with a permanent error: no retry makes this build understand it, so
// it is dead-lettered on its first failure and kept, byte for byte, to be replayed
// once consumers that know it are deployed; it is never misread. A minor version
// ("1.3") only adds fields, which decoding ignores: it counts as its major version.
// Every producer here sets event_version from day one, so a message without one is
// refused as well (DefaultVersion -1), instead of being taken for version 1.
func readsOnly(s schema, h consumer.EventHandler) consumer.VersionedConfig {
	h.Type, h.Version = s.Type, s.Version
	return consumer.VersionedConfig{Events: []consumer.EventHandler{h}, DefaultVersion: -1}
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
	msg.Metadata.Set(middleware.EventVersionKey, strconv.Itoa(s.Version))
	return msg, nil
}

func orderID(n int) string                { return fmt.Sprintf("ord-%d", n) }
func orderPlacedID(orderID string) string { return "order-placed:" + orderID }
