// Command franzcli is the franz-go (github.com/twmb/franz-go) test client of
// proto-tests/kafka/test_ecosystems.py: an independent Go implementation of
// the Kafka protocol, driven through idemgate and straight to the broker.
//
//	franzcli produce --bootstrap B --topic T --prefix P --count N [--codec C] [--marker M --partitions P] [--idempotent]
//	franzcli consume --bootstrap B --topic T --group G --end M --partitions P [--timeout S] [--max-partition-bytes B]
//
// Output is JSON lines on stdout: one object per delivered or consumed
// record, a "brokers" line with the client's own view of the cluster, and a
// final "done" line. Errors go to stderr with a non-zero exit.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var out = json.NewEncoder(os.Stdout)

func emit(v map[string]any) {
	if err := out.Encode(v); err != nil {
		fail("stdout: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "franzcli: "+format+"\n", args...)
	os.Exit(1)
}

// Record i of a run: odd ones keyed, even ones with a null key.
func record(topic, prefix string, i int) *kgo.Record {
	r := &kgo.Record{Topic: topic, Value: []byte(fmt.Sprintf("%s-%06d", prefix, i))}
	if i%2 == 1 {
		r.Key = []byte(fmt.Sprintf("k%d", i))
	}
	return r
}

func codec(name string) kgo.CompressionCodec {
	switch name {
	case "none":
		return kgo.NoCompression()
	case "gzip":
		return kgo.GzipCompression()
	case "snappy":
		return kgo.SnappyCompression()
	case "lz4":
		return kgo.Lz4Compression()
	case "zstd":
		return kgo.ZstdCompression()
	}
	fail("unknown codec %q", name)
	return kgo.NoCompression()
}

// brokers prints the brokers the client's own Metadata request names: the
// addresses it would connect to.
func brokers(cl *kgo.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
	if err != nil {
		fail("metadata: %v", err)
	}
	seen := []string{}
	for _, b := range resp.Brokers {
		seen = append(seen, net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port))))
	}
	emit(map[string]any{"brokers": seen})
}

func produce(args []string) {
	fs := flag.NewFlagSet("produce", flag.ExitOnError)
	bootstrap := fs.String("bootstrap", "", "")
	topic := fs.String("topic", "", "")
	prefix := fs.String("prefix", "", "")
	count := fs.Int("count", 0, "")
	codecName := fs.String("codec", "none", "")
	marker := fs.String("marker", "", "")
	idempotent := fs.Bool("idempotent", false, "")
	partitions := fs.Int("partitions", 1, "")
	_ = fs.Parse(args)
	opts := []kgo.Opt{
		kgo.SeedBrokers(*bootstrap),
		kgo.DefaultProduceTopic(*topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(codec(*codecName)),
		kgo.ProducerLinger(50 * time.Millisecond),
		kgo.RecordDeliveryTimeout(60 * time.Second),
	}
	if !*idempotent {
		opts = append(opts, kgo.DisableIdempotentWrite(), kgo.MaxProduceRequestsInflightPerBroker(1))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		fail("client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	results := make([]map[string]any, *count)
	errs := make(chan error, *count+1)
	for i := 0; i < *count; i++ {
		i := i
		cl.Produce(ctx, record(*topic, *prefix, i), func(r *kgo.Record, err error) {
			if err != nil {
				errs <- fmt.Errorf("record %d: %w", i, err)
				return
			}
			results[i] = map[string]any{"value": string(r.Value), "partition": r.Partition, "offset": r.Offset}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		fail("flush: %v", err)
	}
	if *marker != "" {
		// One end marker per partition ("M-p0", "M-p1", ...), sent by a
		// second client that places records where they say.
		mc, err := kgo.NewClient(append(opts, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
		if err != nil {
			fail("client: %v", err)
		}
		for p := 0; p < *partitions; p++ {
			r := &kgo.Record{Topic: *topic, Partition: int32(p), Value: []byte(fmt.Sprintf("%s-p%d", *marker, p))}
			if err := mc.ProduceSync(ctx, r).FirstErr(); err != nil {
				fail("marker: %v", err)
			}
			results = append(results, map[string]any{"value": string(r.Value), "partition": r.Partition, "offset": r.Offset, "marker": true})
		}
		mc.Close()
	}
	close(errs)
	for err := range errs {
		fail("produce: %v", err)
	}
	for _, r := range results {
		emit(r)
	}
	brokers(cl)
	emit(map[string]any{"done": len(results)})
}

func consume(args []string) {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	bootstrap := fs.String("bootstrap", "", "")
	topic := fs.String("topic", "", "")
	group := fs.String("group", "", "")
	end := fs.String("end", "", "")
	partitions := fs.Int("partitions", 1, "")
	timeout := fs.Float64("timeout", 60, "")
	maxBytes := fs.Int("max-partition-bytes", 0, "fetch at most this many bytes per partition (0: the default)")
	_ = fs.Parse(args)
	opts := []kgo.Opt{
		kgo.SeedBrokers(*bootstrap),
		kgo.ConsumeTopics(*topic),
		kgo.ConsumerGroup(*group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500 * time.Millisecond),
	}
	if *maxBytes > 0 {
		opts = append(opts, kgo.FetchMaxPartitionBytes(int32(*maxBytes)), kgo.FetchMaxBytes(int32(*maxBytes)))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		fail("client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeout*float64(time.Second)))
	defer cancel()
	n := 0
	// The end markers still to see: one per partition, "END-p0", "END-p1", ...
	pending := map[string]bool{}
	for p := 0; p < *partitions; p++ {
		pending[fmt.Sprintf("%s-p%d", *end, p)] = true
	}
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			brokers(cl)
			fail("end markers %v missing after %.0f s (%d records)", pending, *timeout, n)
		}
		if errs := fetches.Errors(); len(errs) > 0 {
			fail("fetch: %v", errs)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var key any
			if r.Key != nil {
				key = string(r.Key)
			}
			emit(map[string]any{"partition": r.Partition, "offset": r.Offset, "key": key, "value": string(r.Value)})
			n++
			delete(pending, string(r.Value))
		})
		if len(pending) == 0 {
			if err := cl.CommitUncommittedOffsets(ctx); err != nil {
				fail("commit: %v", err)
			}
			brokers(cl)
			emit(map[string]any{"done": n})
			return
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: franzcli produce|consume ...")
	}
	switch os.Args[1] {
	case "produce":
		produce(os.Args[2:])
	case "consume":
		consume(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
