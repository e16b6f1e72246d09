package storage_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/nbiot-live/nbiot-live/coap-server/storage"
	"github.com/nbiot-live/nbiot-live/coap-server/uplink"
	"github.com/nbiot-live/nbiot-live/internal/livelog"
	nbiotv1 "github.com/nbiot-live/nbiot-live/proto/nbiot/v1"
)

// The protobuf Uplink is mapped by hand twice: to the live-log JSON
// (internal/livelog) and to rows (storage.RowsOf); the sensor_data check in
// the migrations is a third list. TestUplinkMappings walks the Uplink
// descriptor so that a field added to the protobuf, or dropped from one
// mapping, fails here until all three agree.

// notData are fields that name the uplink rather than carry its data: both
// mappings take them from the record (the DTLS identity may win).
var notData = map[string]string{
	"device_id": "the device is uplink.Accepted.DeviceID and the entry's deviceId, not data",
}

// summarized are repeated fields the live log shows as a count only (the
// contract's wifi_count); their elements' fields must still be stored.
var summarized = map[string]string{
	"wifi_aps": "the live log shows wifi_count; the rows keep every AP",
}

func TestUplinkMappings(t *testing.T) {
	md := (&nbiotv1.Uplink{}).ProtoReflect().Descriptor()
	var checked int
	types := map[string]bool{}
	walk(md, nil, func(path []protoreflect.FieldDescriptor) {
		name := fieldPath(path)
		if _, ok := notData[name]; ok {
			return
		}
		base, set := pair(path)
		shown := !bytes.Equal(entryJSON(t, base), entryJSON(t, set))
		baseRows, setRows := rowsOf(base), rowsOf(set)
		stored := !bytes.Equal(mustJSON(t, baseRows), mustJSON(t, setRows))
		for _, s := range setRows.Sensors {
			types[s.DataType] = true
		}
		checked++
		if _, ok := summarized[topName(path)]; ok && len(path) > 1 {
			if !stored {
				t.Errorf("%s: not stored by storage.RowsOf (the live log only counts %s; the rows must keep it)", name, topName(path))
			}
			return
		}
		switch {
		case shown && !stored:
			t.Errorf("%s: shown in the live log (internal/livelog) but not stored (coap-server/storage/rows.go)", name)
		case stored && !shown:
			t.Errorf("%s: stored (coap-server/storage/rows.go) but not shown in the live log (internal/livelog)", name)
		case !shown && !stored:
			t.Errorf("%s: neither shown in the live log nor stored: map it in both (or list it in notData with the reason)", name)
		}
	})
	if checked < 20 {
		t.Fatalf("walked %d fields of nbiot.v1.Uplink; the walk is broken", checked)
	}

	sqlTypes := sensorTypesInSQL(t)
	for typ := range types {
		if !slices.Contains(sqlTypes, typ) {
			t.Errorf("sensor_data type %q is written by storage.RowsOf but missing from the data_type check in supabase/migrations (%v)", typ, sqlTypes)
		}
	}
	for _, typ := range sqlTypes {
		if !types[typ] {
			t.Errorf("sensor_data type %q is allowed by the migrations but no Uplink field produces it", typ)
		}
	}
	for _, typ := range []string{storage.TypeTemperature, storage.TypeWifiScan, storage.TypeGnss, storage.TypeBattery, storage.TypeReboot} {
		if !types[typ] {
			t.Errorf("storage.%s type %q is never produced by an Uplink field", typ, typ)
		}
	}
}

// walk calls leaf for every scalar field reachable from md, and for every
// repeated message field itself (its presence is data: one element or none).
func walk(md protoreflect.MessageDescriptor, prefix []protoreflect.FieldDescriptor, leaf func([]protoreflect.FieldDescriptor)) {
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		path := append(slices.Clone(prefix), fd)
		if fd.Kind() != protoreflect.MessageKind {
			leaf(path)
			continue
		}
		if len(prefix) > 8 {
			continue // a recursive message; the protocol has none
		}
		if fd.IsList() {
			leaf(path)
		}
		walk(fd.Message(), path, leaf)
	}
}

// pair returns two uplinks that differ only in the field at path: base has
// its parents (one list element each) and the field unset or zero; set has
// the field set to a non-zero value (or, for a list, one empty element).
func pair(path []protoreflect.FieldDescriptor) (base, set *nbiotv1.Uplink) {
	base = &nbiotv1.Uplink{UplinkCount: 1}
	m := base.ProtoReflect()
	for _, fd := range path[:len(path)-1] {
		if fd.IsList() {
			l := m.Mutable(fd).List()
			el := l.NewElement()
			l.Append(el)
			m = el.Message()
		} else {
			m = m.Mutable(fd).Message()
		}
	}
	set = proto.Clone(base).(*nbiotv1.Uplink)
	last := path[len(path)-1]
	if last.Kind() == protoreflect.MessageKind && last.IsList() {
		target(set, path).Mutable(last).List().AppendMutable()
	} else {
		target(set, path).Set(last, nonZero(last))
	}
	return base, set
}

// target is the message holding the field at path in u (parents made by pair).
func target(u *nbiotv1.Uplink, path []protoreflect.FieldDescriptor) protoreflect.Message {
	m := u.ProtoReflect()
	for _, fd := range path[:len(path)-1] {
		if fd.IsList() {
			m = m.Get(fd).List().Get(0).Message()
		} else {
			m = m.Get(fd).Message()
		}
	}
	return m
}

func nonZero(fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(fd.Enum().Values().Get(1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(-7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-7)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{1, 2, 3, 4, 5, 6})
	}
	panic("mapping_test: no value for kind " + fd.Kind().String())
}

var (
	mappingTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mappingID   = uuid.MustParse("00000000-0000-0000-0000-000000000001")
)

func entryJSON(t *testing.T, u *nbiotv1.Uplink) []byte {
	t.Helper()
	b, err := livelog.Uplink("MAP1", mappingTime, u, nil).Marshal()
	if err != nil {
		t.Fatalf("live-log entry: %v", err)
	}
	return b
}

func rowsOf(u *nbiotv1.Uplink) storage.Rows {
	return storage.RowsOf([]uplink.Accepted{{ID: mappingID, DeviceID: "MAP1", ReceivedAt: mappingTime, Uplink: u}})
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

func fieldPath(path []protoreflect.FieldDescriptor) string {
	names := make([]string, len(path))
	for i, fd := range path {
		names[i] = string(fd.Name())
	}
	return strings.Join(names, ".")
}

func topName(path []protoreflect.FieldDescriptor) string { return string(path[0].Name()) }

// sensorTypeCheck is the list in "data_type in ('temperature', …)".
var sensorTypeCheck = regexp.MustCompile(`(?i)data_type\s+in\s*\(([^)]*)\)`)

// sensorTypesInSQL reads the sensor_data data_type check list from the
// migrations, as `supabase db push` applies them (in file-name order; the
// last migration that states the list wins).
func sensorTypesInSQL(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "supabase", "migrations", "*.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations found: %v", err)
	}
	sort.Strings(files)
	var list string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range sensorTypeCheck.FindAllSubmatch(b, -1) {
			list = string(m[1])
		}
	}
	if list == "" {
		t.Fatal("no sensor_data data_type check found in supabase/migrations")
	}
	var out []string
	for _, s := range strings.Split(list, ",") {
		out = append(out, strings.Trim(strings.TrimSpace(s), "'"))
	}
	return out
}
