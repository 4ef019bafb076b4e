-- trace_svg.lua: draws a luapool --trace file as an SVG timeline.
--
--   lua5.4 scripts/trace_svg.lua TRACE.json [-o OUT.svg] [--width PIXELS] [--rows N]
--
-- One lane per worker with a box for each slice of a task's execution
-- (coloured by the task's depth, labelled with its name where it fits,
-- hover for id and duration); the queued/suspended counters as a step
-- chart; then, when the run has at most N tasks (default 300), one row per
-- task in tree order: a line for its life from its first slice to its
-- last, its slices coloured by worker, and an arrow from the moment its
-- parent spawned it to its first slice (with more tasks, a line says how
-- many got no row). The legend lists every depth drawn. Plain Lua 5.4 with its own small JSON reader: no modules.

-- ---- a small JSON reader (the subset JSON itself is) ----

local function decoder(text)
  local pos = 1
  local value

  local function fail(what)
    error(string.format("trace_svg: bad JSON at byte %d: %s", pos, what), 0)
  end

  local function skip()
    pos = text:find("[^ \t\r\n]", pos) or #text + 1
  end

  local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
                    r = "\r", t = "\t" }

  local function str()
    local out, i = {}, pos + 1
    while true do
      local j = text:find('["\\]', i)
      if not j then fail("unterminated string") end
      out[#out + 1] = text:sub(i, j - 1)
      if text:sub(j, j) == '"' then
        pos = j + 1
        return table.concat(out)
      end
      local c = text:sub(j + 1, j + 1)
      if c == "u" then
        local code = tonumber(text:sub(j + 2, j + 5), 16) or fail("bad \\u escape")
        out[#out + 1] = utf8.char(code)
        i = j + 6
      else
        out[#out + 1] = escapes[c] or fail("bad escape")
        i = j + 2
      end
    end
  end

  function value()
    skip()
    local c = text:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1
      skip()
      if text:sub(pos, pos) == "}" then pos = pos + 1 return obj end
      while true do
        skip()
        if text:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = str()
        skip()
        if text:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        obj[k] = value()
        skip()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return obj end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local arr = {}
      pos = pos + 1
      skip()
      if text:sub(pos, pos) == "]" then pos = pos + 1 return arr end
      while true do
        arr[#arr + 1] = value()
        skip()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return arr end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return str()
    elseif text:find("^true", pos) then
      pos = pos + 4
      return true
    elseif text:find("^false", pos) then
      pos = pos + 5
      return false
    elseif text:find("^null", pos) then
      pos = pos + 4
      return nil
    else
      local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail("unexpected character") end
      pos = pos + #num
      return tonumber(num) or fail("bad number")
    end
  end

  return value
end

local function decode(text) return decoder(text)() end

-- ---- drawing ----

local PALETTE = { "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
                  "#ff9da7", "#9c755f", "#bab0ac" }

local MERGE_ABOVE = 5000


local function esc(s)
  return (tostring(s):gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                         ['"'] = "&quot;" }))
end

-- A round step for about n ticks over span (microseconds).
local function tick_step(span, n)
  local raw = span / n
  local mag = 10 ^ math.floor(math.log(raw, 10))
  for _, m in ipairs({ 1, 2, 5, 10 }) do
    if m * mag >= raw then return m * mag end
  end
  return 10 * mag
end

local function fmt_time(us)
  if us == 0 then return "0" end
  if us >= 1e6 then return string.format("%gs", us / 1e6) end
  if us >= 1e3 then return string.format("%gms", us / 1e3) end
  return string.format("%gµs", us)
end

-- Tasks in tree order (each after its parent, siblings by id).
local function tree_order(tasks)
  local kids, roots = {}, {}
  for id, t in pairs(tasks) do
    if tasks[t.parent] then
      kids[t.parent] = kids[t.parent] or {}
      table.insert(kids[t.parent], id)
    else
      roots[#roots + 1] = id
    end
  end
  local order = {}
  local function walk(list)
    table.sort(list)
    for _, id in ipairs(list) do
      order[#order + 1] = id
      if kids[id] then walk(kids[id]) end
    end
  end
  walk(roots)
  return order
end

local function render(doc, width, max_rows)
  local slices, starts, ends, samples, names = {}, {}, {}, {}, {}
  local tids, tasks, t0, t1 = {}, {}, math.huge, -math.huge
  for _, e in ipairs(doc.traceEvents or doc) do
    if e.ph == "X" then
      slices[#slices + 1] = e
      tids[e.tid] = true
      t0 = math.min(t0, e.ts)
      t1 = math.max(t1, e.ts + e.dur)
      local id = e.args and e.args.id or -#slices
      local t = tasks[id]
      if not t then
        t = { name = e.name, parent = e.args and e.args.parent, depth = e.args and e.args.depth or 0,
              from = e.ts, to = e.ts + e.dur, slices = {} }
        tasks[id] = t
      end
      t.from, t.to = math.min(t.from, e.ts), math.max(t.to, e.ts + e.dur)
      table.insert(t.slices, e)
    elseif e.ph == "s" then
      starts[e.id] = e
    elseif e.ph == "f" then
      ends[e.id] = e
    elseif e.ph == "C" then
      samples[#samples + 1] = e
      t1 = math.max(t1, e.ts)
    elseif e.ph == "M" and e.name == "thread_name" then
      names[e.tid] = e.args.name
    end
  end
  if #slices == 0 then error("trace_svg: the trace has no task slices", 0) end
  local lanes = {}
  for tid in pairs(tids) do lanes[#lanes + 1] = tid end
  table.sort(lanes)
  local lane_of = {}
  for i, tid in ipairs(lanes) do lane_of[tid] = i end
  local rows = tree_order(tasks)
  local elided = 0 -- tasks that get no row: the picture says how many
  if #rows > max_rows then rows, elided = {}, #rows end
  local max_depth = 0
  for _, e in ipairs(slices) do max_depth = math.max(max_depth, e.args and e.args.depth or 0) end
  local row_of = {}
  for i, id in ipairs(rows) do row_of[id] = i end

  local left, right, top, lane_h, gap, row_h = 110, 16, 40, 24, 4, 10
  local chart_h = #samples > 0 and 50 or 0
  local lanes_top = top + 14
  local lanes_bottom = lanes_top + #lanes * (lane_h + gap)
  local chart_top = lanes_bottom + 10
  local rows_top = chart_top + (chart_h > 0 and chart_h + 30 or 0) + 14
  local height = rows_top + #rows * row_h + (elided > 0 and 14 or 0) + 36
  local span = math.max(t1 - t0, 1)
  local function x(ts) return left + (ts - t0) / span * (width - left - right) end
  local function lane_y(tid) return lanes_top + (lane_of[tid] - 1) * (lane_h + gap) end
  local function row_y(id) return rows_top + (row_of[id] - 1) * row_h end

  local out = {}
  local function w(...) out[#out + 1] = string.format(...) end
  w('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" ' ..
    'font-family="sans-serif" font-size="11">', width, height, width, height)
  w('<defs><marker id="arrow" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="4" ' ..
    'markerHeight="4" orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#666"/></marker></defs>')
  w('<rect width="100%%" height="100%%" fill="white"/>')
  w('<text x="8" y="16" font-size="13" font-weight="bold">%s</text>',
    esc(string.format("luapool trace: %d slices of %d tasks on %d worker%s, %s", #slices,
                      (function() local n = 0 for _ in pairs(tasks) do n = n + 1 end return n end)(),
                      #lanes, #lanes == 1 and "" or "s", fmt_time(span))))
  -- Time axis, over everything.
  local step = tick_step(span, 8)
  for t = 0, span + 1e-9, step do
    local tx = x(t0 + t)
    w('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e4e4e4"/>', tx, top, tx, height - 30)
    w('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>', tx, top - 4,
      esc(fmt_time(t)))
  end
  -- Worker lanes: what ran where, coloured by depth.
  for _, tid in ipairs(lanes) do
    local y = lane_y(tid)
    w('<rect x="%d" y="%d" width="%d" height="%d" fill="#f4f4f4"/>', left, y, width - left - right,
      lane_h)
    w('<text x="%d" y="%d" text-anchor="end" dominant-baseline="middle">%s</text>', left - 6,
      y + lane_h / 2, esc(names[tid] or ("worker " .. tid)))
  end
  -- A big trace would make millions of boxes narrower than a pixel: above
  -- MERGE_ABOVE slices, neighbours on a lane that touch within half a pixel
  -- are drawn as one box (coloured by the first, titled with the count).
  local merge = #slices > MERGE_ABOVE
  local by_lane = {}
  for _, e in ipairs(slices) do
    by_lane[e.tid] = by_lane[e.tid] or {}
    table.insert(by_lane[e.tid], e)
  end
  for _, tid in ipairs(lanes) do
    local list, y = by_lane[tid], lane_y(tid)
    table.sort(list, function(a, b) return a.ts < b.ts end)
    local run -- {x0, x1, colour, count}
    local function flush()
      if run then
        w('<rect x="%.2f" y="%d" width="%.2f" height="%d" fill="%s"><title>%d slices</title>' ..
          '</rect>', run[1], y + 2, math.max(run[2] - run[1], 0.8), lane_h - 4, run[3], run[4])
        run = nil
      end
    end
    for _, e in ipairs(list) do
      local sx = x(e.ts)
      local sw = math.max(x(e.ts + e.dur) - sx, 0.8)
      local depth = e.args and e.args.depth or 0
      local colour = PALETTE[depth % #PALETTE + 1]
      if merge and run and sx <= run[2] + 0.5 then
        run[2], run[4] = math.max(run[2], sx + sw), run[4] + 1
      elseif merge and sw < 1 then
        flush()
        run = { sx, sx + sw, colour, 1 }
      else
        flush()
        w('<rect x="%.2f" y="%d" width="%.2f" height="%d" fill="%s"><title>%s (id %s, depth %d): ' ..
          '%s</title></rect>', sx, y + 2, sw, lane_h - 4, colour, esc(e.name),
          esc(e.args and e.args.id or "?"), depth, esc(fmt_time(e.dur)))
        if sw > 7 * #e.name + 6 then
          w('<text x="%.1f" y="%d" fill="white" dominant-baseline="middle">%s</text>', sx + 3,
            y + lane_h / 2, esc(e.name))
        end
      end
    end
    flush()
  end
  -- Counters: step lines of queued and suspended tasks.
  if chart_h > 0 then
    local cy = chart_top
    local max = 1
    for _, s in ipairs(samples) do
      max = math.max(max, s.args.queued or 0, s.args.suspended or 0)
    end
    w('<text x="%d" y="%d" text-anchor="end">tasks waiting</text>', left - 6, cy + 12)
    w('<text x="%d" y="%d" text-anchor="end" fill="#777">(max %d)</text>', left - 6, cy + 26, max)
    w('<rect x="%d" y="%d" width="%d" height="%d" fill="#fafafa" stroke="#eee"/>', left, cy,
      width - left - right, chart_h)
    for _, key in ipairs({ "queued", "suspended" }) do
      local colour = key == "queued" and "#e15759" or "#4e79a7"
      local pts, prev = {}, nil
      for _, s in ipairs(samples) do
        local py = cy + chart_h - (s.args[key] or 0) / max * (chart_h - 4)
        if prev then pts[#pts + 1] = string.format("%.1f,%.1f", x(s.ts), prev) end
        pts[#pts + 1] = string.format("%.1f,%.1f", x(s.ts), py)
        prev = py
      end
      if prev then pts[#pts + 1] = string.format("%.1f,%.1f", x(t1), prev) end
      w('<polyline points="%s" fill="none" stroke="%s" stroke-width="1.4"/>',
        table.concat(pts, " "), colour)
    end
    w('<text x="%d" y="%d" fill="#e15759">queued (waiting for a worker)</text>', left,
      cy + chart_h + 14)
    w('<text x="%d" y="%d" fill="#4e79a7">suspended (started, waiting for something)</text>',
      left + 200, cy + chart_h + 14)
  end
  -- One row per task in tree order: its life from first to last slice, its
  -- slices (coloured by worker) and the arrows from its spawner.
  if #rows > 0 then
    w('<text x="8" y="%d" font-weight="bold">tasks</text>', rows_top - 4)
    for _, id in ipairs(rows) do
      local t, y = tasks[id], row_y(id)
      w('<text x="%d" y="%.1f" text-anchor="end" font-size="8" dominant-baseline="middle">%s%s ' ..
        '%s</text>', left - 6, y + row_h / 2, string.rep("·", math.min(t.depth, 8)), esc(t.name), id)
      w('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#bbb"/>', x(t.from), y + row_h / 2,
        math.max(x(t.to), x(t.from) + 1), y + row_h / 2)
      for _, e in ipairs(t.slices) do
        w('<rect x="%.2f" y="%.1f" width="%.2f" height="%d" fill="%s"/>', x(e.ts), y + 1,
          math.max(x(e.ts + e.dur) - x(e.ts), 2), row_h - 2,
          PALETTE[(e.tid - 1) % #PALETTE + 1])
      end
    end
    for id, s in pairs(starts) do
      local f, t = ends[id], tasks[id]
      if f and t and row_of[id] and row_of[t.parent] then
        local y1, y2 = row_y(t.parent) + row_h / 2, row_y(id) + row_h / 2
        w('<path d="M%.1f,%.1f L%.1f,%.1f" fill="none" stroke="#666" stroke-opacity="0.5" ' ..
          'stroke-width="0.7" marker-end="url(#arrow)"/>', x(s.ts), y1, x(f.ts), y2 - 2)
      end
    end
  end
  if elided > 0 then
    w('<text x="8" y="%d" class="elided" fill="#555">%s</text>', rows_top - 4,
      esc(string.format("%d tasks, more than the %d that get a row each: rows not drawn " ..
                        "(--rows %d draws them)", elided, max_rows, elided)))
  end
  -- Legends: every depth drawn (the colours repeat every #PALETTE levels:
  -- "2,12" is one colour).
  local ly = height - 10
  w('<text x="%d" y="%d" fill="#555">worker lanes by depth:</text>', left, ly)
  local lx = left + 130
  w('<g class="legend-depth">')
  for d = 0, math.min(max_depth, #PALETTE - 1) do
    local label = tostring(d)
    if d + #PALETTE <= max_depth then
      label = label .. "," .. (d + #PALETTE) .. (d + 2 * #PALETTE <= max_depth and ",..." or "")
    end
    w('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>', lx,
      ly - 9, PALETTE[d + 1], lx + 14, ly, label)
    lx = lx + 22 + 7 * #label
  end
  w('</g>')
  if #rows > 0 then
    lx = lx + 20
    w('<text x="%d" y="%d" fill="#555">task rows by worker:</text>', lx, ly)
    for i, tid in ipairs(lanes) do
      if i > #PALETTE then -- the colours repeat
        w('<text x="%d" y="%d">...</text>', lx + 120 + (i - 1) * 30, ly)
        break
      end
      w('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%d</text>',
        lx + 120 + (i - 1) * 30, ly - 9, PALETTE[(tid - 1) % #PALETTE + 1],
        lx + 134 + (i - 1) * 30, ly, tid)
    end
  end
  w("</svg>")
  return table.concat(out, "\n") .. "\n"
end

-- ---- command line ----

local function main(argv)
  local input, output, width, rows = nil, nil, 1000, 300
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-o" then
      output, i = argv[i + 1], i + 1
    elseif a == "--width" then
      width, i = tonumber(argv[i + 1]), i + 1
    elseif a == "--rows" then
      rows, i = tonumber(argv[i + 1]), i + 1
    elseif a == "-h" or a == "--help" then
      io.write("usage: lua5.4 scripts/trace_svg.lua TRACE.json [-o OUT.svg] [--width PIXELS] [--rows N]\n")
      return 0
    elseif not input then
      input = a
    else
      io.stderr:write("trace_svg: unexpected argument ", a, "\n")
      return 2
    end
    i = i + 1
  end
  if not input or not width then
    io.stderr:write("usage: lua5.4 scripts/trace_svg.lua TRACE.json [-o OUT.svg] [--width PIXELS] [--rows N]\n")
    return 2
  end
  local f, err = io.open(input, "rb")
  if not f then
    io.stderr:write("trace_svg: ", err, "\n")
    return 2
  end
  local text = f:read("a")
  f:close()
  local ok, svg = pcall(function()
    local doc = decode(text)
    local dropped = doc.otherData and doc.otherData.dropped_events or 0
    if dropped > 0 then
      io.stderr:write(string.format("trace_svg: the trace dropped %d events (its buffers were " ..
                                    "full): the end of the run is missing\n", dropped))
    end
    return render(doc, width, rows or 0)
  end)
  if not ok then
    io.stderr:write(tostring(svg), "\n")
    return 1
  end
  local out = io.stdout
  if output then out = assert(io.open(output, "wb")) end
  out:write(svg)
  if output then out:close() end
  return 0
end

if ... == "trace_svg" then -- required as a module (specs): expose the parts
  return { decode = decode, render = render }
end
os.exit(main(arg))
