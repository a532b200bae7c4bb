//! telemetry - a `handler` task: converts one JSON temperature reading.
//!
//! Input:  {"device":"t-17","celsius":21.5}  (or "fahrenheit" instead of
//!         "celsius"; "celsius" wins if both are given; "device" is optional;
//!         other members are ignored)
//! Output: {"device":"t-17","celsius":21.5,"fahrenheit":70.7,"kelvin":294.65}
//!         with every temperature rounded to 2 decimals.
//! Errors: an error reply (contract v1) with a one-line message.
//!
//! Implements the handler contract directly: exports memory, wy_abi_version,
//! wy_alloc and wy_handle, and imports nothing.

const std = @import("std");
const json = std.json;

const abi_version: i32 = 1;

/// Temperatures are accepted up to this magnitude, in any unit.
const max_magnitude: f64 = 1e12;

const Failure = error{
    NotAnObject,
    DeviceNotString,
    TemperatureNotNumber,
    MissingTemperature,
    OutOfRange,
};

/// Per-execution arena: wy_alloc resets it, keeping its pages for next time.
var arena: std.heap.ArenaAllocator = .init(std.heap.wasm_allocator);

export fn wy_abi_version() i32 {
    return abi_version;
}

export fn wy_alloc(size: u32) usize {
    _ = arena.reset(.retain_capacity);
    const buf = arena.allocator().alloc(u8, @max(size, 1)) catch return 0;
    return @intFromPtr(buf.ptr);
}

export fn wy_handle(ptr: [*]const u8, len: u32) i64 {
    const out = convert(arena.allocator(), ptr[0..len]) catch |err| return fail(message(err));
    return pack(@intFromPtr(out.ptr), out.len);
}

fn pack(ptr: usize, len: usize) i64 {
    return @bitCast((@as(u64, ptr) << 32) | @as(u64, len));
}

fn fail(msg: []const u8) i64 {
    return pack(@intFromPtr(msg.ptr) | 0x8000_0000, msg.len);
}

fn message(err: anyerror) []const u8 {
    return switch (err) {
        error.SyntaxError, error.UnexpectedEndOfInput => "telemetry: input is not valid JSON",
        error.NotAnObject => "telemetry: expected a JSON object like {\"device\":\"t-17\",\"celsius\":21.5}",
        error.DeviceNotString => "telemetry: \"device\" must be a string",
        error.TemperatureNotNumber => "telemetry: \"celsius\" and \"fahrenheit\" must be numbers",
        error.MissingTemperature => "telemetry: missing temperature: give \"celsius\" or \"fahrenheit\"",
        error.OutOfRange => "telemetry: temperature out of range (must lie between absolute zero and 1e12 degrees Celsius)",
        error.OutOfMemory, error.WriteFailed => "telemetry: out of memory",
        else => "telemetry: invalid input",
    };
}

const Reading = struct {
    device: ?[]const u8 = null,
    celsius: ?f64 = null,
    fahrenheit: ?f64 = null,
};

fn convert(gpa: std.mem.Allocator, input: []const u8) ![]const u8 {
    const reading = try parse(gpa, input);
    const celsius = if (reading.celsius) |c|
        c
    else if (reading.fahrenheit) |f|
        (f - 32.0) * 5.0 / 9.0
    else
        return Failure.MissingTemperature;
    if (!(celsius >= -273.15 and celsius <= max_magnitude)) return Failure.OutOfRange;

    var out: std.Io.Writer.Allocating = .init(gpa);
    const w = &out.writer;
    try w.writeByte('{');
    if (reading.device) |d| {
        try w.writeAll("\"device\":");
        try json.Stringify.value(d, .{}, w);
        try w.writeByte(',');
    }
    try w.writeAll("\"celsius\":");
    try writeRounded(w, celsius);
    try w.writeAll(",\"fahrenheit\":");
    try writeRounded(w, celsius * 9.0 / 5.0 + 32.0);
    try w.writeAll(",\"kelvin\":");
    try writeRounded(w, celsius + 273.15);
    try w.writeByte('}');
    return out.written();
}

/// Reads the members this task knows from a JSON object; the last of
/// duplicate members counts.
fn parse(gpa: std.mem.Allocator, input: []const u8) !Reading {
    var scanner = json.Scanner.initCompleteInput(gpa, input);
    var reading: Reading = .{};
    switch (try scanner.peekNextTokenType()) {
        .object_begin => _ = try scanner.next(),
        .end_of_document => return error.UnexpectedEndOfInput,
        else => {
            try scanner.skipValue(); // a syntax error wins over "not an object"
            return Failure.NotAnObject;
        },
    }
    while (true) {
        const key = switch (try scanner.nextAlloc(gpa, .alloc_if_needed)) {
            .object_end => break,
            .string, .allocated_string => |k| k,
            else => return error.SyntaxError, // not reached: the scanner yields keys here
        };
        if (std.mem.eql(u8, key, "device")) {
            reading.device = switch (try scanner.nextAlloc(gpa, .alloc_if_needed)) {
                .string, .allocated_string => |s| s,
                .null => null,
                else => return Failure.DeviceNotString,
            };
        } else if (std.mem.eql(u8, key, "celsius")) {
            reading.celsius = try number(gpa, &scanner);
        } else if (std.mem.eql(u8, key, "fahrenheit")) {
            reading.fahrenheit = try number(gpa, &scanner);
        } else {
            try scanner.skipValue();
        }
    }
    if (try scanner.next() != .end_of_document) return error.SyntaxError;
    return reading;
}

/// A temperature member: a number, or null for "not given".
fn number(gpa: std.mem.Allocator, scanner: *json.Scanner) !?f64 {
    return switch (try scanner.nextAlloc(gpa, .alloc_if_needed)) {
        .number, .allocated_number => |n| std.fmt.parseFloat(f64, n) catch Failure.OutOfRange,
        .null => null,
        else => Failure.TemperatureNotNumber,
    };
}

/// Writes x rounded to 2 decimals, without trailing zeros (|x| < 9e16).
fn writeRounded(w: *std.Io.Writer, x: f64) !void {
    const cents: i64 = @intFromFloat(@round(x * 100.0));
    const a = @abs(cents);
    if (cents < 0) try w.writeByte('-');
    try w.printInt(a / 100, 10, .lower, .{});
    const frac: u8 = @intCast(a % 100);
    if (frac != 0) {
        try w.writeByte('.');
        try w.writeByte('0' + frac / 10);
        if (frac % 10 != 0) try w.writeByte('0' + frac % 10);
    }
}
