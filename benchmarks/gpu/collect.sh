#!/usr/bin/env bash
# Runs ON the GPU machine at each poll: packs what lease.sh has finished into $OUT (files under
# 15 MB each, the device tool's limit being 16 MiB), so a lease that ends early loses nothing
# that was done before the last poll.
cd /tmp || exit 1
for d in paired perreq sweep agree2 orig; do
  [ -d $d ] || continue
  tar czf $OUT/$d.tgz $d specload/raw_data 2>/dev/null
  if [ "$(stat -c %s $OUT/$d.tgz)" -gt 15000000 ]; then
    split -b 15000000 $OUT/$d.tgz $OUT/$d.tgz.part- && rm $OUT/$d.tgz
  fi
done
[ -d /tmp/bench ] && tar czf $OUT/bench.tgz bench
cp /tmp/lease.log /tmp/gpu.txt /tmp/versions.txt $OUT/ 2>/dev/null
ls -la $OUT
