package stream

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nbiot-live/nbiot-live/internal/envconf"
)

// FromEnv fills the retention, replica, sync and credential settings from
// the environment (NATS_REPLICAS, UPLINKS_MAX_BYTES, LIVELOG_MAX_AGE,
// LIVELOG_MAX_BYTES, LIVELOG_PER_DEVICE, NATS_SYNC_ALWAYS, NATS_CREDS,
// NATS_CA, NATS_CERT, NATS_KEY); empty variables
// keep the defaults. URL (NATS_URL) must be set already: NATS_REPLICAS
// above 1 needs it. An error names the variable.
func (c *Config) FromEnv(getenv func(string) string) error {
	ints := []struct {
		name   string
		dst    *int64
		lo, hi int64
	}{
		{"UPLINKS_MAX_BYTES", &c.UplinksBytes, 1 << 20, 1 << 40},
		{"LIVELOG_MAX_BYTES", &c.LiveBytes, 1 << 20, 1 << 40},
		{"LIVELOG_PER_DEVICE", &c.LivePerDevice, 1, 1_000_000},
	}
	for _, v := range ints {
		s := getenv(v.name)
		if s == "" {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < v.lo || n > v.hi {
			return fmt.Errorf("%s: want an integer from %d to %d", v.name, v.lo, v.hi)
		}
		*v.dst = n
	}
	if s := getenv("NATS_REPLICAS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 5 {
			return fmt.Errorf("NATS_REPLICAS: want 1 to 5")
		}
		c.Replicas = n
	}
	if s := getenv("LIVELOG_MAX_AGE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Minute {
			return fmt.Errorf("LIVELOG_MAX_AGE: want a duration of at least 1m, e.g. 24h")
		}
		c.LiveMaxAge = d
	}
	if s := getenv("STORAGE_REDELIVERY"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second || d > time.Hour {
			return fmt.Errorf("STORAGE_REDELIVERY: want a duration from 1s to 1h, e.g. 1m")
		}
		c.RedeliverAfter = d
	}
	always, err := envconf.Bool(getenv, "NATS_SYNC_ALWAYS", false)
	if err != nil {
		return err
	}
	c.SyncAlways = c.SyncAlways || always
	c.Creds, c.CAFile = getenv("NATS_CREDS"), getenv("NATS_CA")
	c.CertFile, c.KeyFile = getenv("NATS_CERT"), getenv("NATS_KEY")
	return c.validate()
}

// validate checks what no single variable tells: the embedded server
// (no NATS_URL) is one node and keeps one copy of each stream.
func (c Config) validate() error {
	if c.URL == "" && c.Replicas > 1 {
		return errors.New("NATS_REPLICAS: more than 1 needs an external cluster (NATS_URL); the embedded server keeps one copy")
	}
	return c.validateAuth()
}
