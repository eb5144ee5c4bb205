#!/usr/bin/env python3
# Usage: scripts/sched_stalls.py PID  (runs until PID exits, then prints)
# Finds scheduler stalls of a process's threads (e.g. a uroce bench server's progress thread):
# samples /proc/PID/task/*/schedstat every 2 ms; a "stall" is a span in which a thread got no
# CPU time. At the end of each stall longer than 30 ms it prints its length and how much of it
# the thread was runnable but waiting for a CPU (schedstat's run_delay). runnable ≈ length means
# CPU starvation; runnable ≈ 0 means the thread slept (idle, or a missed wake-up).
import os,sys,time
pid=sys.argv[1]; st={}; out=[]
while os.path.exists('/proc/'+pid):
    now=time.monotonic()
    try: tids=os.listdir('/proc/%s/task'%pid)
    except: break
    for t in tids:
        try:
            c,w,_=map(int,open('/proc/%s/task/%s/schedstat'%(pid,t)).read().split())
            comm=open('/proc/%s/task/%s/comm'%(pid,t)).read().strip()
        except: continue
        if t not in st: st[t]=[c,w,now]; continue
        c0,w0,t0=st[t]
        if c!=c0:
            if now-t0>0.03: out.append('%.3f %s/%s no-cpu %.1f ms, runnable %.1f ms'%(t0,t,comm,(now-t0)*1e3,(w-w0)/1e6))
            st[t]=[c,w,now]
    time.sleep(0.002)
print('\n'.join(out) or 'no stalls >30ms')
