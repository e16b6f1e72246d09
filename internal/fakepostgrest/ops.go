package fakepostgrest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

func doSelect(ctx context.Context, tx pgx.Tx, t *table, q query) ([]byte, error) {
	cols, err := t.columnList(q.selectCols, "")
	if err != nil {
		return nil, err
	}
	var args []any
	where, err := t.where(q, "", &args)
	if err != nil {
		return nil, err
	}
	order, err := t.orderBy(q)
	if err != nil {
		return nil, err
	}
	tail := ""
	if q.limit >= 0 {
		tail += fmt.Sprintf(" limit %d", q.limit)
	}
	if q.offset > 0 {
		tail += fmt.Sprintf(" offset %d", q.offset)
	}
	sql := fmt.Sprintf(`select coalesce(json_agg(_r), '[]'::json) from (select %s from %s%s%s%s) _r`, cols, t.qname, where, order, tail)
	var out []byte
	err = tx.QueryRow(ctx, sql, args...).Scan(&out)
	return out, err
}

// payloadKeys checks that body is a JSON object or an array of objects with
// identical keys (PostgREST's PGRST102) and returns the sorted keys and the
// body as an array.
func payloadKeys(body []byte) ([]string, []byte, error) {
	body = []byte(strings.TrimSpace(string(body)))
	if len(body) > 0 && body[0] == '{' {
		body = append(append([]byte{'['}, body...), ']')
	}
	var objs []map[string]json.RawMessage
	if err := json.Unmarshal(body, &objs); err != nil {
		return nil, nil, badRequest("PGRST102", "Empty or invalid json")
	}
	if len(objs) == 0 {
		return nil, body, nil
	}
	keys := make([]string, 0, len(objs[0]))
	for k := range objs[0] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, o := range objs[1:] {
		if len(o) != len(keys) {
			return nil, nil, badRequest("PGRST102", "All object keys must match")
		}
		for _, k := range keys {
			if _, ok := o[k]; !ok {
				return nil, nil, badRequest("PGRST102", "All object keys must match")
			}
		}
	}
	return keys, body, nil
}

func doInsert(ctx context.Context, tx pgx.Tx, t *table, q query, p preferences, body []byte) ([]byte, error) {
	keys, arr, err := payloadKeys(body)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		if p.representation {
			return []byte("[]"), nil
		}
		return nil, nil
	}
	cols, err := t.columnList(keys, "")
	if err != nil {
		return nil, err
	}
	sql := fmt.Sprintf(`insert into %s as _t (%s) select %s from json_populate_recordset(null::%s, $1::json) _r`, t.qname, cols, cols, t.qname)
	if p.resolution == "merge-duplicates" || p.resolution == "ignore-duplicates" {
		target := q.onConflict
		if target == nil {
			target = t.pkey
		}
		tcols, err := t.columnList(target, "")
		if err != nil {
			return nil, err
		}
		if p.resolution == "ignore-duplicates" {
			sql += fmt.Sprintf(" on conflict (%s) do nothing", tcols)
		} else {
			sets := make([]string, len(keys))
			for i, k := range keys {
				c := pgx.Identifier{k}.Sanitize()
				sets[i] = c + " = excluded." + c
			}
			sql += fmt.Sprintf(" on conflict (%s) do update set %s", tcols, strings.Join(sets, ", "))
		}
	}
	return run(ctx, tx, sql, p.representation, string(arr))
}

func doUpdate(ctx context.Context, tx pgx.Tx, t *table, q query, p preferences, body []byte) ([]byte, error) {
	trimmed := strings.TrimSpace(string(body))
	if !strings.HasPrefix(trimmed, "{") {
		return nil, badRequest("PGRST102", "PATCH takes one JSON object")
	}
	keys, _, err := payloadKeys(body)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, nil
	}
	sets := make([]string, len(keys))
	for i, k := range keys {
		c, err := t.column(k)
		if err != nil {
			return nil, err
		}
		sets[i] = c + " = _r." + c
	}
	args := []any{trimmed}
	where, err := t.where(q, "_t.", &args)
	if err != nil {
		return nil, err
	}
	if where == "" {
		return nil, errNoFilter
	}
	sql := fmt.Sprintf(`update %s as _t set %s from json_populate_record(null::%s, $1::json) _r%s`, t.qname, strings.Join(sets, ", "), t.qname, where)
	return run(ctx, tx, sql, p.representation, args...)
}

func doDelete(ctx context.Context, tx pgx.Tx, t *table, q query, p preferences) ([]byte, error) {
	var args []any
	where, err := t.where(q, "_t.", &args)
	if err != nil {
		return nil, err
	}
	if where == "" {
		return nil, errNoFilter
	}
	return run(ctx, tx, fmt.Sprintf(`delete from %s as _t%s`, t.qname, where), p.representation, args...)
}

// run executes a write; with representation it returns the affected rows
// as a JSON array.
func run(ctx context.Context, tx pgx.Tx, sql string, representation bool, args ...any) ([]byte, error) {
	if !representation {
		_, err := tx.Exec(ctx, sql, args...)
		return nil, err
	}
	var out []byte
	err := tx.QueryRow(ctx, `with _w as (`+sql+` returning _t.*) select coalesce(json_agg(_w), '[]'::json) from _w`, args...).Scan(&out)
	return out, err
}
