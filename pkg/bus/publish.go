package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/devstatus/devstatus/events"
)

// InputPublisher writes input events to the input stream: a device event to
// its device's subject (partition by FNV-1a of the id, see
// [events.DeviceSubject]), a tick to its partition's subject, always with a
// Nats-Msg-Id (the stream's duplicate window drops a re-send) and an
// expected stream (a subject no longer bound to the input stream is refused,
// not stored elsewhere).
//
// It is a small value: make one per connection, or per call, freely.
type InputPublisher struct {
	// JS is the JetStream context published on. Required.
	JS jetstream.JetStream
	// Partitions is the input partition count in force ([Bus.Partitions]).
	Partitions int
	// Encode encodes an event. Nil: [events.EncodeInput].
	Encode func(*events.Input) ([]byte, error)
}

// NewInputPublisher is the publisher of b's input stream on b's connection.
func (b *Bus) NewInputPublisher() InputPublisher {
	return InputPublisher{JS: b.JS, Partitions: b.partitions}
}

func (p InputPublisher) encode(in *events.Input) ([]byte, error) {
	enc := p.Encode
	if enc == nil {
		enc = events.EncodeInput
	}
	data, err := enc(in)
	if err != nil {
		return nil, fmt.Errorf("bus: encode %s %s: %w", in.Type, in.ID, err)
	}
	return data, nil
}

func msgIDOf(in *events.Input, msgID string) string {
	if msgID == "" {
		return in.ID
	}
	return msgID
}

// Publish stores the device event in (subject of in.Device) and waits for
// the PubAck, within ctx. msgID is its Nats-Msg-Id ("" : in.ID). The PubAck
// has Duplicate set when the stream already held that id in its duplicate
// window (nothing stored). Errors: the encoder's, or JetStream's.
func (p InputPublisher) Publish(ctx context.Context, in *events.Input, msgID string) (*jetstream.PubAck, error) {
	data, err := p.encode(in)
	if err != nil {
		return nil, err
	}
	return p.JS.Publish(ctx, events.DeviceSubject(in.Device, p.Partitions), data,
		jetstream.WithMsgID(msgIDOf(in, msgID)), jetstream.WithExpectStream(events.InputStream))
}

// PublishAsync sends the device event in without waiting: the future
// settles with its PubAck or error. msgID as for Publish; opts are added
// to the publish options. Errors: the encoder's, or a refusal to send
// (too many PubAcks pending, disconnected).
func (p InputPublisher) PublishAsync(in *events.Input, msgID string, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	data, err := p.encode(in)
	if err != nil {
		return nil, err
	}
	return p.JS.PublishAsync(events.DeviceSubject(in.Device, p.Partitions), data,
		append([]jetstream.PublishOpt{jetstream.WithMsgID(msgIDOf(in, msgID)), jetstream.WithExpectStream(events.InputStream)}, opts...)...)
}

// PublishTickAsync sends the tick in to partition's tick subject without
// waiting (Nats-Msg-Id in.ID).
func (p InputPublisher) PublishTickAsync(partition int, in *events.Input) (jetstream.PubAckFuture, error) {
	data, err := p.encode(in)
	if err != nil {
		return nil, err
	}
	return p.JS.PublishAsync(events.TickSubject(partition), data,
		jetstream.WithMsgID(in.ID), jetstream.WithExpectStream(events.InputStream))
}
