package stream

import (
	"fmt"
	"io/fs"
	"path/filepath"
)

// The embedded server's file store on DATA_DIR. nats-server reserves each
// stream's MaxBytes against a bound of its own, by default three quarters
// of the free space: on the 1 GB volume of fly.toml (about 950 MiB free)
// that is some 710 MiB, and UPLINKS' 512 MiB and LIVELOG's 256 MiB were
// refused at start ("insufficient storage resources available"). The
// streams' own limits are the bound that matters; so the server may use
// the whole filesystem, and at start the limits are checked against what
// is free for them (storeFits): past it, the disk would fill before the
// streams do, and JetStream stop.

// storeBytes is the most the streams may hold on disk: their MaxBytes.
func (c Config) storeBytes() int64 {
	n := c.LiveBytes
	if c.Storage {
		n += c.UplinksBytes + c.asideConfig().MaxBytes
	}
	return n
}

// diskSpace is the size of the filesystem holding dir and the bytes free
// for an unprivileged writer; ok is false where it cannot be told. A
// variable for tests.
var diskSpace = statDisk

// storeFits checks that the streams' bounds fit the filesystem of dir:
// what is free there plus what the store already holds. It returns the
// bound to give the server (the filesystem's size; 0, the server's own,
// where it cannot be told).
func (c Config) storeFits(dir string) (int64, error) {
	total, free, ok := diskSpace(dir)
	if !ok {
		return 0, nil
	}
	held := dirBytes(filepath.Join(dir, "jetstream"))
	if need := c.storeBytes(); need > free+held {
		return 0, fmt.Errorf("DATA_DIR: the streams may hold %d MiB (%s), but %s has %d MiB free for them (%d MiB of it the store's): "+
			"lower UPLINKS_MAX_BYTES or LIVELOG_MAX_BYTES, or give DATA_DIR a larger disk", need/mib, c.boundsText(), dir, (free+held)/mib, held/mib)
	}
	return total, nil
}

const mib = 1 << 20

// boundsText names the bounds storeBytes adds up.
func (c Config) boundsText() string {
	what := fmt.Sprintf("LIVELOG_MAX_BYTES %d MiB", c.LiveBytes/mib)
	if c.Storage {
		what = fmt.Sprintf("UPLINKS_MAX_BYTES %d MiB, its sixteenth for %s, %s", c.UplinksBytes/mib, AsideStream, what)
	}
	return what
}

// dirBytes is the size of the files below dir (0 if there is none).
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
